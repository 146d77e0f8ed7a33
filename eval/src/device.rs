//! `--device`: parse `auto`, `cpu`, `cuda` or `cuda:N`, and open the candle device.

use candle_core::{DType, Device, DeviceLocation};
use model_soup::format::{Checkpoint, Dtype};

use super::error::{Error, Result};

/// The command that builds soup-eval with CUDA, for error messages and `--help`.
pub const CUDA_BUILD_COMMAND: &str = "cargo build --release -p soup-eval --features cuda";

/// Where models run, as given to `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The first CUDA GPU when this build has CUDA and the machine has a GPU, else the CPU
    /// (the default).
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    // A malformed value is a bad command line (exit 2, kind usage); a
                    // well-formed one this build or machine can't open is a device error.
                    Error::Format(model_soup::Error::Usage(format!(
                        "bad --device '{s}'; use auto, cpu, cuda or cuda:N (N a GPU ordinal)"
                    )))
                }),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. A CUDA device needs a build with the `cuda` cargo feature; `Auto`
    /// takes GPU 0 when it opens and the CPU otherwise (no CUDA in this build, no driver, no
    /// GPU).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(n),
            DeviceSpec::Auto => Ok(open_cuda(0).unwrap_or(Device::Cpu)),
        }
    }
}

/// How reports and messages name a dtype: as `--eval-dtype` spells it.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// `--eval-dtype auto`: the float type that holds most of `checkpoint`'s parameters, so a
/// bf16 model is evaluated in bf16 and needs no f32 copy of twice its size. Two exceptions:
/// on the CPU, bf16 becomes f32 (candle's CPU backend has no bf16 kernels: its convolutions
/// refuse bf16 and its matrix multiply widens both operands to f32 on every call), and f64
/// or 8-bit floats become f32 (the models compute in f32, f16 or bf16 only).
pub fn checkpoint_dtype(checkpoint: &Checkpoint, device: &Device) -> DType {
    let mut elements = [0u64; 3];
    for tensor in checkpoint.tensors() {
        let slot = match tensor.info.dtype {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::BF16 => 2,
            _ => continue,
        };
        elements[slot] += tensor.info.elements();
    }
    // The first of equal counts wins, so a tie prefers f32.
    let most = (0..3).fold(0, |best, i| {
        if elements[i] > elements[best] {
            i
        } else {
            best
        }
    });
    match most {
        1 => DType::F16,
        2 if !device.is_cpu() => DType::BF16,
        _ => DType::F32,
    }
}

/// How a device is named in reports and on `--device`: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| {
        Error::Device(format!(
            "cannot open --device cuda:{n}: {}; check that the machine has that GPU and a driver for CUDA 13.0 or newer (nvidia-smi), or use --device cpu",
            super::error::candle_message(&e)
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "--device cuda:{n} needs the CUDA build of soup-eval, and this is the CPU build; build it with `{CUDA_BUILD_COMMAND}` (needs nvcc from a CUDA 13 toolkit; README.md, \"Which binary to build where\"), or use --device cpu"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_cpu_and_cuda_ordinals() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in [
            "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "", "auto:0", " cpu",
        ] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("--device"), "{bad}: {err}");
        }
        for spec in [DeviceSpec::Auto, DeviceSpec::Cpu, DeviceSpec::Cuda(2)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
    }

    /// A checkpoint file of zero-filled tensors with these dtypes and element counts.
    fn checkpoint(
        dir: &std::path::Path,
        tensors: &[(&str, safetensors::Dtype, usize)],
    ) -> Checkpoint {
        let data: Vec<(String, Vec<u8>, safetensors::Dtype, usize)> = tensors
            .iter()
            .map(|&(name, dtype, n)| {
                (
                    name.to_string(),
                    vec![0u8; n * dtype.bitsize() / 8],
                    dtype,
                    n,
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(name, bytes, dtype, n)| {
                let view = safetensors::tensor::TensorView::new(*dtype, vec![*n], bytes).unwrap();
                (name.clone(), view)
            })
            .collect();
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        Checkpoint::open(&path).unwrap()
    }

    #[test]
    fn auto_dtype_is_the_checkpoints_where_the_device_computes_it() {
        use safetensors::Dtype as S;
        let dir = tempfile::tempdir().unwrap();
        let cpu = Device::Cpu;
        type Case<'a> = (&'a [(&'a str, S, usize)], DType);
        let cases: &[Case] = &[
            (&[("w", S::F16, 100), ("b", S::F32, 10)], DType::F16),
            (&[("w", S::F32, 100), ("b", S::F16, 10)], DType::F32),
            // bf16 cannot be multiplied on the CPU.
            (&[("w", S::BF16, 100), ("b", S::F32, 10)], DType::F32),
            // f64 and integer tensors never decide.
            (
                &[("w", S::F64, 100), ("b", S::F16, 10), ("n", S::I64, 1000)],
                DType::F16,
            ),
            (&[("n", S::I64, 5)], DType::F32),
            // A tie prefers f32.
            (&[("a", S::F16, 10), ("b", S::F32, 10)], DType::F32),
        ];
        for (tensors, want) in cases {
            let c = checkpoint(dir.path(), tensors);
            assert_eq!(checkpoint_dtype(&c, &cpu), *want, "{tensors:?}");
        }
    }

    #[test]
    fn cpu_is_named_cpu() {
        assert_eq!(name(&DeviceSpec::Cpu.open().unwrap()), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_gives_the_build_command() {
        for n in [0, 1] {
            let err = DeviceSpec::Cuda(n).open().unwrap_err().to_string();
            assert!(err.contains(CUDA_BUILD_COMMAND), "{err}");
            assert!(err.contains(&format!("cuda:{n}")), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_without_the_feature_is_the_cpu() {
        assert!(DeviceSpec::Auto.open().unwrap().is_cpu());
    }
}
