//! The edge between the wire and the domain: conversions and the caller
//! identity every gRPC handler checks.

pub mod authz;
pub mod convert;
pub mod status;
