//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong when configuring, loading or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// A per-level list such as `--nlayers 8,6,4,2` could not be parsed.
    #[error("invalid per-level list `{spec}` for {name}: {reason}")]
    LevelSpec {
        /// Which knob (`nlayers`, `nhidden`, ...).
        name: String,
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A weight file does not fit the model it is loaded into.
    #[error("weight file {path}: {reason}")]
    Weights {
        /// File (or a description of the byte source).
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A tensor argument has the wrong shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The compute device failed or cannot run what was asked.
    #[error("device: {0}")]
    Device(String),
    /// Bytes that do not decode as a PNG or JPEG image.
    #[error("not a readable image: {0}")]
    Image(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn weights(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Weights { path: path.into(), reason: reason.into() }
    }
}
