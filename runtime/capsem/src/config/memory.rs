//! Memory sizes as people write them on the command line (`512M`, `2GiB`, `2048`), in MiB.

/// Parses a memory size into MiB: a whole number with an optional binary unit — `M`/`MiB`
/// (the default) or `G`/`GiB` — case-insensitive, an optional space before the unit.
/// Decimal units (`MB`, `GB`) are refused rather than guessed.
pub fn parse_memory(s: &str) -> Result<u32, String> {
    let expected = "expected a whole number of MiB, or a number with a unit: 512M, 512MiB, 2G, 2GiB";
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{s}` is not a memory size: {expected}"));
    }
    let factor: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "m" | "mi" | "mib" => 1,
        "g" | "gi" | "gib" => 1024,
        "mb" | "gb" => {
            return Err(format!("`{s}`: decimal units are ambiguous here; write M/MiB or G/GiB (powers of 1024)"));
        }
        _ => return Err(format!("`{s}` has an unknown unit `{}`: {expected}", unit.trim())),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is too large"))?;
    let mib =
        n.checked_mul(factor).filter(|&m| m <= u64::from(u32::MAX)).ok_or_else(|| format!("`{s}` is too large"))?;
    if mib == 0 {
        return Err(format!("`{s}`: memory must be more than 0"));
    }
    Ok(mib as u32)
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn memory_sizes_table() {
        let ok: &[(&str, u32)] = &[
            ("512", 512),
            ("512M", 512),
            ("512m", 512),
            ("512MiB", 512),
            ("512 MiB", 512),
            ("2G", 2048),
            ("2g", 2048),
            ("2GiB", 2048),
            (" 4096 ", 4096),
            ("4194303G", 4_294_966_272),
        ];
        for (input, want) in ok {
            assert_eq!(parse_memory(input), Ok(*want), "{input:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "expected a whole number"),
            ("G", "expected a whole number"),
            ("-1G", "expected a whole number"),
            ("1.5G", "unknown unit `.5G`"),
            ("2GB", "decimal units"),
            ("512MB", "decimal units"),
            ("2T", "unknown unit `T`"),
            ("0", "more than 0"),
            ("0G", "more than 0"),
            ("4194304G", "too large"),
            ("99999999999999999999", "too large"),
        ];
        for (input, want) in bad {
            let err = parse_memory(input).unwrap_err();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }
}
