//! The dashboard's files as compiled into the binary, and how each is served.

/// Every file under `src/dashboard/assets`, by its path there (`js/main.js`).
static FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// A compiled-in file.
pub fn get(path: &str) -> Option<&'static [u8]> {
    FILES
        .iter()
        .find(|(name, _)| *name == path)
        .map(|(_, bytes)| *bytes)
}

/// The content type a file is served with, by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// `path` as a relative path that cannot leave the folder it is joined to (no `..`, no
/// root, no empty or dot segments), for serving from disk.
pub fn safe_relative(path: &str) -> Option<std::path::PathBuf> {
    let mut out = std::path::PathBuf::new();
    for segment in path.split('/') {
        // `:` too: on Windows a drive prefix (`C:`) or a stream name would leave the folder.
        if segment.is_empty()
            || segment == "."
            || segment == ".."
            || segment.contains('\\')
            || segment.contains(':')
        {
            return None;
        }
        out.push(segment);
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_entry_module_are_compiled_in() {
        let index = get("index.html").map(|b| String::from_utf8_lossy(b).into_owned());
        let index = index.unwrap_or_default();
        assert!(index.contains("js/main.js"), "index.html loads js/main.js");
        assert!(get("js/main.js").is_some());
        assert!(get("../Cargo.toml").is_none());
    }

    #[test]
    fn paths_that_leave_the_folder_are_refused() {
        for bad in [
            "../x",
            "a/../../b",
            "/etc/passwd",
            "",
            "a//b",
            "./a",
            "a\\..\\b",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
        assert_eq!(
            safe_relative("js/main.js"),
            Some(std::path::PathBuf::from("js/main.js"))
        );
    }
}
