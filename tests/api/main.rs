//! Integration tests: a real server on an ephemeral port, a real HTTP client, a real PostgreSQL.
//! One binary (rather than one per file) so that one embedded cluster serves the whole run.

mod accounts;
mod bench_routes;
mod binary;
mod browser;
mod cache;
mod cache_api;
mod cache_headers;
mod channels;
mod chat;
mod conditional;
mod documents;
mod email_verification;
mod embedded;
mod faults;
mod gateway;
mod helpers;
mod hostile;
mod http2;
mod jobs;
mod leaks;
mod login_policy;
mod mail;
mod ops;
mod page_privacy;
mod parser_fuzz;
mod pipeline;
mod publishing;
mod relay_limits;
mod request_fuzz;
mod security;
mod shell;
mod slow_clients;
mod soak;
mod uploads;
mod workflows;
