//! llama.cpp's GGUF in and out of btx: [`import`] reads a GGUF as a Hugging Face checkpoint,
//! [`export`] writes a btx model as a GGUF llama.cpp runs. Both are exact or refuse by name:
//! btx and llama.cpp must compute the same model from the same file.

pub mod export;
pub mod import;
pub mod vocab;
