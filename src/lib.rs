//! ztkit facade.
