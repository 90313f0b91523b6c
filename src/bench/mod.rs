//! The benchmark suite's side in the binary: the workloads of the benchmark protocol.
//!
//! * [`jobs`]: `hearth bench jobs`, the job-queue benchmark (W4), and
//!   [`workflows`] (`hearth bench jobs workflows`): chord callback latency, chain steps/s;
//! * [`cache`]: `hearth bench cache`, get/set round trips per cache tier;
//! * [`docs`]: `hearth bench docs`, collaborative editing: update fan-out latency with many
//!   editors on one document, and memory per open document;
//! * [`ws`]: `hearth bench ws`, a W5 load client that does not cap the server it measures;
//! * [`floor`]: `hearth bench ws-floor`, a W5 server that does only the kernel's part of a
//!   fan-out, so that W5's floor on a machine can be measured beside Hearth;
//! * [`sse`]: `hearth bench sse`, the same for W6's event streams ([`client`] holds what the
//!   two share);
//! * [`soak`]: `hearth bench soak`, a long run of mixed traffic against a child server that
//!   reports its memory and descriptors over time, errors, losses and latencies;
//! * [`routes`]: the HTTP and WebSocket endpoints the load clients hit (W5 chat over a
//!   WebSocket consumer, W6 server-sent events), served only with `HEARTH_BENCH_ROUTES=1` so
//!   production routes stay clean.

pub mod cache;
mod client;
pub mod docs;
pub mod floor;
pub mod jobs;
pub mod routes;
pub mod soak;
pub mod sse;
pub mod workflows;
pub mod ws;
