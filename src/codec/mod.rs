//! Byte formats we read and write ourselves: tar for the engine's archive endpoints,
//! base64 for file contents and the engine's path-stat header, JSON string literals
//! written from bytes in pieces (command output, file contents). Pure functions of
//! bytes; they know nothing of the engine or HTTP. `sha256` names the stub copies by
//! content.

pub mod base64;
pub mod json;
pub mod sha256;
pub mod tar;
