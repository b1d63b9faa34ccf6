//! Orchestrators turn service specs into tasks.
