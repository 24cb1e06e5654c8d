//! Why a store directory could not be opened, in the words an operator acts
//! on. fjall's errors print as their Debug form (`FjallError: Io(Os { code:
//! 30, kind: ReadOnlyFilesystem, .. })`); the operating system's reason is
//! somewhere in their chain, and that is what the start-up error shows.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The path as the operator finds it: a relative one (the default data
/// directory is) is shown under the working directory.
pub(super) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The reason inside a fjall error: the first I/O error of its chain, else
/// fjall's own text.
pub(super) fn fjall_cause(error: &fjall::Error) -> String {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_cause(io);
        }
        next = e.source();
    }
    error.to_string()
}

/// An I/O error's text, with what it means here where the system's words are
/// unclear.
pub(super) fn io_cause(error: &std::io::Error) -> String {
    match error.kind() {
        ErrorKind::AlreadyExists | ErrorKind::NotADirectory => {
            format!("{error}: a file is in the way where a directory should be")
        }
        ErrorKind::StorageFull => format!("{error}: the disk is full"),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_reason_is_read_out_of_fjall() {
        let e = fjall::Error::Io(std::io::Error::from(ErrorKind::PermissionDenied));
        assert_eq!(fjall_cause(&e), "permission denied");
        assert_eq!(fjall_cause(&fjall::Error::Locked), "FjallError: Locked");
    }

    #[test]
    fn a_file_in_the_way_is_said_so() {
        let e = std::io::Error::from_raw_os_error(17);
        assert!(io_cause(&e).ends_with("a file is in the way where a directory should be"));
    }

    #[test]
    fn relative_paths_are_shown_under_the_working_directory() {
        let shown = absolute(Path::new("gateway-data/t"));
        assert!(shown.is_absolute());
        assert!(shown.ends_with("gateway-data/t"));
    }
}
