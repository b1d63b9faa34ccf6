//! See the executor trait in the parent module.
