use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// A BLAKE3 digest, the address of every artifact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("'{0}' is not a digest: expected 64 lowercase hex characters")]
    Malformed(String),
}

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Hashes a file by streaming it, so large files never sit in memory.
    pub fn of_file(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Digest(*hasher.finalize().as_bytes()))
    }

    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Hashes bytes as they arrive (a download checked while it streams).
    pub fn hasher() -> DigestHasher {
        DigestHasher(blake3::Hasher::new())
    }

    /// The first 12 hex characters: what humans read in listings.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

/// An incremental [`Digest`].
pub struct DigestHasher(blake3::Hasher);

impl DigestHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|_| DigestError::Malformed(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_hex() {
        let d = Digest::of_bytes(b"weir");
        assert_eq!(d.hex().parse::<Digest>().unwrap(), d);
        assert!("xyz".parse::<Digest>().is_err());
    }

    /// Pinned: a digest is a blob's name in every store and backup, so the
    /// same bytes must name the same blob in every Weir that ever ran.
    #[test]
    fn digests_are_stable_across_versions() {
        assert_eq!(
            Digest::of_bytes(b"weir").hex(),
            blake3::hash(b"weir").to_hex().to_string()
        );
        assert_eq!(
            Digest::of_bytes(b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    proptest::proptest! {
        /// Bytes hashed whole, in any chunks, or from a file: one digest,
        /// and its text parses back to it.
        #[test]
        fn the_digest_is_of_the_bytes_alone(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            cuts in proptest::collection::vec(0usize..20_000, 0..8),
        ) {
            let whole = Digest::of_bytes(&bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut hasher = Digest::hasher();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                hasher.update(&bytes[from..cut]);
                from = cut;
            }
            proptest::prop_assert_eq!(hasher.finish(), whole);
            let file = tempfile_path(&bytes);
            proptest::prop_assert_eq!(Digest::of_file(&file).unwrap(), whole);
            let _ = std::fs::remove_file(&file);
            proptest::prop_assert_eq!(whole.hex().parse::<Digest>().unwrap(), whole);
        }
    }

    fn tempfile_path(bytes: &[u8]) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "weir-digest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// What an artifact's blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    File,
    /// A manifest of files, each stored as its own blob.
    Dir,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::File => "file",
            ArtifactKind::Dir => "dir",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "file" => Some(ArtifactKind::File),
            "dir" => Some(ArtifactKind::Dir),
            _ => None,
        }
    }
}
