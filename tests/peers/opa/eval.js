#!/usr/bin/env node
// Differential-test oracle: evaluate Rego with REAL Open Policy Agent.
//
// stdin : {"modules": {"name.rego": "src", ...}, "data": {...},
//          "cases": [{"query": "data.x.y", "input": {...}}, ...]}
// stdout: {"engine": "...", "results": [ {"value": v} | {"undefined": true} | {"error": "..."} ]}
//         (one result per case, same order; also printed one per line with --lines)
//
// The engine is real OPA v1.20.2 (github.com/open-policy-agent/opa/v1/rego, unmodified), built
// as a Go c-shared library and shipped in the PyPI wheel opa-golib-python-bindings==0.4.4
// (manylinux_2_34_x86_64), loaded here through koffi (FFI). No `opa` binary can be downloaded
// on the build machines; `cargo xtask deps` fetches the wheel with pip, checks its sha256 and
// extracts the library into vendor/. Rego v1 syntax; builtin errors are strict (an error, where
// an OPA server's default would make the expression undefined).
'use strict';

const fs = require('fs');
const path = require('path');

function parseArgs(argv) {
  const o = { lines: false, lib: null };
  for (const a of argv) {
    if (a === '--lines') o.lines = true;
    else if (a.startsWith('--lib=')) o.lib = a.slice(6);
    else throw new Error('unknown argument ' + a);
  }
  return o;
}

// ---------------------------------------------------------------- OPA v1.20.2 (native)
function opaEngine(libPath) {
  const koffi = require('koffi');
  const so = libPath || process.env.OPA_BRIDGE_LIB ||
    path.join(__dirname, 'vendor', 'opa_bindings', 'libopabridge.so');
  if (!fs.existsSync(so)) throw new Error('missing ' + so + ' (run setup.sh)');
  const lib = koffi.load(so);
  const OpaNew = lib.func('uint64_t OpaNew()');
  const OpaDestroy = lib.func('void OpaDestroy(uint64_t)');
  const OpaFreeString = lib.func('void OpaFreeString(void *)');
  const OpaAddPolicy = lib.func('void *OpaAddPolicy(uint64_t, const char *, const char *)');
  const OpaAddData = lib.func('void *OpaAddData(uint64_t, const char *, const char *)');
  const OpaEvalQuery = lib.func('void *OpaEvalQuery(uint64_t, const char *, const char *, int, int)');

  // Every fallible call returns a malloc'd JSON envelope {"result":..} or {"error":{code,message}}.
  function call(fn, ...args) {
    const p = fn(...args);
    if (!p) throw new Error('native call returned NULL');
    let s;
    try { s = koffi.decode(p, 'char', -1); } finally { OpaFreeString(p); }
    return JSON.parse(s);
  }
  const errMsg = (e) => `${e.code}: ${e.message}`;

  return {
    name: 'opa v1.20.2 (opa-golib-python-bindings 0.4.4, strict builtin errors)',
    run(req) {
      const h = OpaNew();
      try {
        for (const [name, src] of Object.entries(req.modules || {})) {
          const env = call(OpaAddPolicy, h, name, src);
          if (env.error) return (req.cases || []).map(() => ({ error: errMsg(env.error) }));
        }
        if (req.data !== undefined && req.data !== null) {
          const env = call(OpaAddData, h, '', JSON.stringify(req.data));
          if (env.error) return (req.cases || []).map(() => ({ error: errMsg(env.error) }));
        }
        return (req.cases || []).map((c) => {
          // No "input" key => input is undefined (as with `opa eval` without --input).
          const input = Object.prototype.hasOwnProperty.call(c, 'input') ? JSON.stringify(c.input) : '';
          const env = call(OpaEvalQuery, h, c.query, input, 0, 0);
          if (env.error) return { error: errMsg(env.error) };
          return shapeResultSet(env.result);
        });
      } finally {
        OpaDestroy(h);
      }
    },
  };
}

// rego.ResultSet -> oracle result.  Empty set = undefined.  One result: value of its first
// expression (plus its bindings, e.g. for `x := ...` queries).  Several results (queries such
// as `x := data.a[_]`): "value" is the first one, "results" lists all.
function shapeResultSet(rs) {
  if (!rs || rs.length === 0) return { undefined: true };
  const one = (r) => {
    const o = { value: r.expressions.length === 1 ? r.expressions[0].value : r.expressions.map((e) => e.value) };
    if (r.bindings && Object.keys(r.bindings).length) o.bindings = r.bindings;
    return o;
  };
  const first = one(rs[0]);
  if (rs.length > 1) first.results = rs.map(one);
  return first;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const req = JSON.parse(fs.readFileSync(0, 'utf8'));
  const engine = opaEngine(opts.lib);
  const t0 = process.hrtime.bigint();
  const results = await engine.run(req);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (opts.lines) for (const r of results) process.stdout.write(JSON.stringify(r) + '\n');
  else process.stdout.write(JSON.stringify({ engine: engine.name, elapsed_ms: ms, results }, null, 1) + '\n');
  if (engine.close) engine.close();
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(2); });
