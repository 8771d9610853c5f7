//! `--device-map`: where the model runs.

use std::fmt;
use std::str::FromStr;

/// The device a user asked for, as the seed's `--device-map` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceMap {
    /// CUDA device 0 when its execution provider loads, else the CPU (the log says which).
    #[default]
    Auto,
    Cpu,
    /// A CUDA device; an error when the provider cannot load.
    Cuda(u32),
}

/// Where a model actually runs after [`DeviceMap`] was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl fmt::Display for DeviceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceMap::Auto => f.write_str("auto"),
            DeviceMap::Cpu => f.write_str("cpu"),
            DeviceMap::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A `--device-map` value that is not `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device map {0:?}: expected `auto`, `cpu`, `cuda` or `cuda:N`")]
pub struct DeviceMapError(pub String);

impl FromStr for DeviceMap {
    type Err = DeviceMapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceMap::Auto),
            "cpu" => Ok(DeviceMap::Cpu),
            "cuda" | "gpu" => Ok(DeviceMap::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .map(DeviceMap::Cuda)
                .ok_or_else(|| DeviceMapError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_spellings() {
        assert_eq!("auto".parse(), Ok(DeviceMap::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceMap::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceMap::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceMap::Cuda(3)));
        assert_eq!("CUDA:1".parse(), Ok(DeviceMap::Cuda(1)));
    }

    #[test]
    fn rejects_anything_else() {
        for bad in ["", "cuda:", "cuda:x", "tpu", "cuda:-1"] {
            assert!(
                bad.parse::<DeviceMap>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }
}
