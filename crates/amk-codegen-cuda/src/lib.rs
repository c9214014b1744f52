//! amk-codegen-cuda
