//! The `coursewire.v1` contract: messages, tonic clients and servers, serde impls
//! (proto field names, used for event payloads) and the descriptor set for reflection.
#![allow(clippy::all)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("coursewire.v1");
    include!(concat!(env!("OUT_DIR"), "/coursewire.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every coursewire proto and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/coursewire_descriptor.bin"));

pub use pbjson_types;
