//! The safetensors format: headers, dtypes, mapped checkpoints, model directories and sharded
//! indexes, and the atomic writer.

mod atomic_dir;
mod checkpoint;
pub mod destination;
mod dtype;
mod header;
mod index;
pub mod model_dir;
mod os;
pub mod small_file;
mod writer;

pub use atomic_dir::AtomicDir;
pub use checkpoint::{Checkpoint, Shard, Tensor};
pub use destination::{Destination, OutputKind, Reads, Request, Role};
pub use dtype::{Accumulator, Dtype};
pub use header::{Header, TensorInfo, MAX_HEADER_LEN};
pub use index::{shard_file_name, ShardIndex, INDEX_NAME, SINGLE_NAME};
pub use model_dir::{model_key, same_model};
pub(crate) use os::{allocate, drop_cached, start_writeback};
pub use os::{
    continue_group, explain_sigbus, process_alive, same_file, sigbus_now_reads_the_output,
    signal_group, silenced, stop_signals_as_interrupt, Stream,
};
pub use writer::{
    encode_header, write_whole, written_by_this_tool, AtomicFile, HeaderEntry, PLOT_MARK,
};
