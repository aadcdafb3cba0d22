//! The pipeline runner.
