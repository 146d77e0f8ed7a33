//! The safetensors format: headers, dtypes, mapped checkpoints and the atomic writer.

mod checkpoint;
mod dtype;
mod header;
mod os;
mod writer;

pub use checkpoint::{Checkpoint, Shard, Tensor};
pub use dtype::{Accumulator, Dtype};
pub use header::{Header, TensorInfo, MAX_HEADER_LEN};
pub use os::process_alive;
pub(crate) use os::start_writeback;
pub use writer::{encode_header, AtomicFile, HeaderEntry};
