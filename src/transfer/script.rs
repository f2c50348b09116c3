//! The shell a machine runs to move its data: fetch each input (with curl,
//! wget or python3, whichever the image has), verify its size and checksum,
//! and upload each output (one PUT, or the parts of a multipart upload). It
//! runs in the background; progress and the outcome go to files in the
//! session's working directory, which the operator reads over SSH. Every
//! signed URL is single-quoted (a URL has no quote of its own), and the script
//! is removed once it has run.

use std::fmt::Write;

/// One file to fetch.
#[derive(Clone, Debug, PartialEq)]
pub struct Fetch {
    pub url: String,
    /// Where on the machine (absolute, or under the working directory).
    pub path: String,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// The MD5 (hex) a single-part S3 object's ETag is.
    pub md5: Option<String>,
}

/// One upload: a whole file, or one part of a multipart upload.
#[derive(Clone, Debug, PartialEq)]
pub struct Put {
    pub url: String,
    pub path: String,
    /// The object's key (for the result lines).
    pub key: String,
    /// 0 for a whole file; 1.. for a part.
    pub part: u16,
    pub offset: u64,
    pub bytes: u64,
}

/// Files the scripts read and write, in the working directory.
pub const INPUTS_PROGRESS: &str = "inputs.progress";
pub const INPUTS_RESULT: &str = "inputs.result";
pub const OUTPUTS_RESULT: &str = "outputs.result";
pub const OUTPUTS_DONE: &str = "outputs.done";

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Shell functions both scripts use: an HTTP client whichever one the image has.
const CLIENT: &str = r#"
get() { # url file -> prints the HTTP status
  if command -v curl >/dev/null 2>&1; then curl -sS -L -o "$2" -w '%{http_code}' "$1" 2>>"$D/transfer.err" || echo 000
  elif command -v wget >/dev/null 2>&1; then
    if wget -q -O "$2" "$1" 2>>"$D/transfer.err"; then echo 200; else echo 000; fi
  elif command -v python3 >/dev/null 2>&1; then python3 - "$1" "$2" <<'PY' 2>>"$D/transfer.err" || echo 000
import sys, urllib.request, urllib.error, shutil
try:
    with urllib.request.urlopen(sys.argv[1]) as r, open(sys.argv[2], 'wb') as f:
        shutil.copyfileobj(r, f); print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
  else echo none; fi
}
put() { # url file headers-file -> prints the HTTP status
  if command -v curl >/dev/null 2>&1; then curl -sS -o /dev/null -D "$3" -w '%{http_code}' -T "$2" "$1" 2>>"$D/transfer.err" || echo 000
  elif command -v python3 >/dev/null 2>&1; then python3 - "$1" "$2" "$3" <<'PY' 2>>"$D/transfer.err" || echo 000
import os, sys, urllib.request, urllib.error
size = os.path.getsize(sys.argv[2])
with open(sys.argv[2], 'rb') as f:
    req = urllib.request.Request(sys.argv[1], data=f, method='PUT', headers={'Content-Length': str(size)})
    try:
        with urllib.request.urlopen(req) as r:
            open(sys.argv[3], 'w').write(''.join(f'{k}: {v}\n' for k, v in r.headers.items())); print(r.status)
    except urllib.error.HTTPError as e:
        print(e.code)
PY
  else echo none; fi
}
digest() { # algorithm file -> hex
  if command -v "${1}sum" >/dev/null 2>&1; then "${1}sum" "$2" | cut -d' ' -f1
  elif command -v python3 >/dev/null 2>&1; then python3 -c "import hashlib,sys; h=hashlib.new(sys.argv[1]); f=open(sys.argv[2],'rb'); [h.update(b) for b in iter(lambda: f.read(1<<20), b'')]; print(h.hexdigest())" "$1" "$2"
  fi
}
"#;

/// Downloads every input, verifies it, and records progress and the outcome:
/// `inputs.result` says `ok`, or `source: ...` (the input is wrong: another host
/// would not help) or `host: ...` (this machine could not do it).
pub fn fetch_script(work_dir: &str, files: &[Fetch]) -> String {
    let total_bytes: u64 = files.iter().filter_map(|f| f.bytes).sum();
    let mut script = format!("set -u\nD=\"{work_dir}\"\ncd \"$D\" || exit 1\n{CLIENT}");
    script.push_str(
        r#"fail() { printf '%s\n' "$1" > inputs.result.tmp; mv inputs.result.tmp inputs.result; exit 1; }
files=0; bytes=0
one() { # url path size sha256 md5
  mkdir -p "$(dirname "$2")" || fail "host: cannot create the directory of $2"
  code=$(get "$1" "$2.part")
  case "$code" in
    none) fail "host: the image has no curl, wget or python3 to download with" ;;
    2??) ;;
    4??) fail "source: HTTP $code for $2 (missing, or not allowed)" ;;
    *) fail "host: could not download $2 (HTTP $code): $(tail -c 300 "$D/transfer.err" 2>/dev/null)" ;;
  esac
  size=$(wc -c < "$2.part" | tr -d ' ')
  if [ -n "$3" ] && [ "$size" != "$3" ]; then fail "host: $2 arrived with $size bytes, not $3"; fi
  if [ -n "$4" ] && [ "$(digest sha256 "$2.part")" != "$4" ]; then fail "source: $2 does not have the SHA-256 the session names"; fi
  if [ -n "$5" ] && [ "$(digest md5 "$2.part")" != "$5" ]; then fail "host: $2 arrived damaged (MD5 differs from the store's)"; fi
  mv "$2.part" "$2" || fail "host: cannot write $2"
  files=$((files + 1)); bytes=$((bytes + size))
"#,
    );
    let _ = writeln!(script, "  echo \"$files {} $bytes {total_bytes}\" > {INPUTS_PROGRESS}", files.len());
    script.push_str("}\n");
    let _ = writeln!(script, "echo \"0 {} 0 {total_bytes}\" > {INPUTS_PROGRESS}", files.len());
    for file in files {
        let _ = writeln!(
            script,
            "one {} {} {} {} {}",
            quote(&file.url),
            quote(&file.path),
            quote(&file.bytes.map(|b| b.to_string()).unwrap_or_default()),
            quote(file.sha256.as_deref().unwrap_or_default()),
            quote(file.md5.as_deref().unwrap_or_default()),
        );
    }
    let _ = writeln!(script, "echo ok > {INPUTS_RESULT}.tmp && mv {INPUTS_RESULT}.tmp {INPUTS_RESULT}");
    script
}

/// Uploads every file and part, and records one line per upload in
/// `outputs.result` (`key part etag md5 bytes`), or a `failed ...` line; writes
/// `outputs.done` at the end. A refused upload is tried again by the operator.
pub fn put_script(work_dir: &str, puts: &[Put]) -> String {
    let mut script = format!("set -u\nD=\"{work_dir}\"\ncd \"$D\" || exit 1\n{CLIENT}");
    script.push_str(&format!(
        r#"rm -f {OUTPUTS_RESULT} {OUTPUTS_DONE}
one() {{ # url path key part offset bytes
  src="$2"
  if [ "$4" != 0 ]; then
    src="$D/.part.$4"
    dd if="$2" of="$src" iflag=skip_bytes,count_bytes skip="$5" count="$6" bs=4M status=none 2>>"$D/transfer.err" ||
      {{ echo "failed $3 $4 host: cannot read $2" >> {OUTPUTS_RESULT}; return; }}
  fi
  md5=$(digest md5 "$src")
  code=$(put "$1" "$src" "$D/.headers")
  etag=$(grep -i '^etag:' "$D/.headers" 2>/dev/null | tr -d '\r"' | sed 's/^[^:]*: *//')
  [ "$4" != 0 ] && rm -f "$src"
  case "$code" in
    2??) echo "$3 $4 $etag $md5 $(wc -c < "$2" | tr -d ' ')" >> {OUTPUTS_RESULT} ;;
    *) echo "failed $3 $4 HTTP $code" >> {OUTPUTS_RESULT} ;;
  esac
}}
"#
    ));
    for put in puts {
        let _ = writeln!(
            script,
            "one {} {} {} {} {} {}",
            quote(&put.url),
            quote(&put.path),
            quote(&put.key),
            put.part,
            put.offset,
            put.bytes
        );
    }
    let _ = writeln!(script, "touch {OUTPUTS_DONE}");
    script
}

/// One line of `outputs.result`.
#[derive(Clone, Debug, PartialEq)]
pub enum PutResult {
    Done { key: String, part: u16, etag: String, md5: String, file_bytes: u64 },
    Failed { key: String, part: u16, why: String },
}

pub fn parse_put_results(text: &str) -> Vec<PutResult> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["failed", key, part, why @ ..] => {
                    Some(PutResult::Failed { key: key.to_string(), part: part.parse().ok()?, why: why.join(" ") })
                }
                [key, part, etag, md5, bytes] => Some(PutResult::Done {
                    key: key.to_string(),
                    part: part.parse().ok()?,
                    etag: etag.to_string(),
                    md5: md5.to_string(),
                    file_bytes: bytes.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_stay_one_word_and_results_read_back() {
        let url = "http://127.0.0.1:9000/b/k?X-Amz-Signature=abc&X-Amz-Date=1";
        let script = fetch_script(
            "$HOME/w",
            &[Fetch { url: url.into(), path: "data/a.bin".into(), bytes: Some(3), sha256: None, md5: None }],
        );
        assert!(script.contains(&format!("one '{url}' 'data/a.bin' '3' '' ''")));
        let results = parse_put_results("runs/a 0 d41d8 d41d8 0\nfailed runs/b 2 HTTP 403\n");
        assert_eq!(
            results,
            vec![
                PutResult::Done {
                    key: "runs/a".into(),
                    part: 0,
                    etag: "d41d8".into(),
                    md5: "d41d8".into(),
                    file_bytes: 0
                },
                PutResult::Failed { key: "runs/b".into(), part: 2, why: "HTTP 403".into() },
            ]
        );
    }
}
