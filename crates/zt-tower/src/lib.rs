//! Tower layers that wire ztkit into axum and tonic.
