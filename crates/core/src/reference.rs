//! Image references, checked with the grammar Docker uses
//! (distribution/reference): `[domain[:port]/]path[:tag][@digest]`, so a
//! task with an image the engine could never pull is refused at submission
//! (400 naming `image`) instead of failing at start.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*
//! domain     := host [ ":" port ]          (first part with "." or ":", or "localhost")
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" [0-9a-fA-F]{32,}
//! ```

/// Why an image reference is not valid; `None` if it is.
pub fn check_image_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("is required and must not be empty".into());
    }
    if reference.len() > 512 {
        return Err("is over 512 characters".into());
    }
    if let Some(bad) = reference.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("`{}` holds {:?}, which no image reference may contain", reference.escape_debug(), bad));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        check_digest(digest).map_err(|why| format!("`{reference}`: digest {why}"))?;
    }
    // A tag is the part after the last ':' if no '/' follows it (a port is followed by a path).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag).map_err(|why| format!("`{reference}`: tag {why}"))?;
    }
    check_name(name).map_err(|why| format!("`{reference}`: {why}"))
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else { return Err("must be ALGORITHM:HEX, e.g. sha256:…".into()) };
    let algorithm_ok = algorithm
        .split(['+', '.', '_', '-'])
        .all(|part| part.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && part.chars().all(|c| c.is_ascii_alphanumeric()));
    if !algorithm_ok {
        return Err(format!("algorithm `{algorithm}` is not valid"));
    }
    if hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("must be at least 32 hexadecimal digits".into());
    }
    if algorithm == "sha256" && hex.len() != 64 {
        return Err("sha256 needs 64 hexadecimal digits".into());
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || tag.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err("must be 1-128 of letters, digits, _ . - (not starting with . or -)".into());
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    if name.len() > 255 {
        return Err("the repository name is over 255 characters".into());
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    if parts.len() > 1
        && (first.contains('.') || first.contains(':') || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()))
    {
        check_domain(first)?;
        parts.remove(0);
    }
    for part in parts {
        if !is_component(part) {
            return Err(format!("`{part}` is not a valid repository name part (lower-case letters and digits, separated by . _ __ or -)"));
        }
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if !port.chars().all(|c| c.is_ascii_digit()) || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("registry port `{port}` is not a number"));
        }
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!("registry host `{host}` is not a valid host name"));
    }
    Ok(())
}

fn is_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-", between alphanumerics.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !is_alnum(bytes[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::check_image_reference as check;

    #[test]
    fn good_references() {
        for good in [
            "busybox",
            "busybox:latest",
            "library/busybox:1.36",
            "ghcr.io/acme/worker:v2.1-rc_3",
            "localhost:5000/team/app",
            "127.0.0.1:5000/app:1",
            "Registry.Example.com/app",
            "my__app/x-y.z",
            "a--b",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "busybox:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "busybox:",
            "BUSYBOX",
            "a@sha256:zz",
            "a@sha256:abc",
            "../../etc",
            "-rm",
            "büsybox",
            "busy\0box",
            "busy box",
            "a/",
            "/a",
            "a//b",
            "a:b:c",
            "a___b",
            "a.",
            "host:99999/app",
            ":tag",
            "a@",
        ] {
            assert!(check(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
