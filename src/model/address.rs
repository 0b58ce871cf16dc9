//! PCI addresses (`DDDD:BB:DD.F`), in any domain.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PCI function address: domain, bus, device (slot) and function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {input:?}: {problem} (expected DDDD:BB:DD.F, e.g. 0000:3b:00.0)")]
pub struct AddressError {
    pub input: String,
    pub problem: &'static str,
}

impl FromStr for PciAddress {
    type Err = AddressError;

    /// Parses `DDDD:BB:DD.F` (the domain may have 4 to 8 hex digits) or the short `BB:DD.F`
    /// form, which means domain 0000.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem| AddressError { input: s.to_owned(), problem };
        let (rest, function) = s.rsplit_once('.').ok_or_else(|| err("no '.' before the function"))?;
        let mut parts = rest.rsplitn(3, ':');
        let device = parts.next().ok_or_else(|| err("no device"))?;
        let bus = parts.next().ok_or_else(|| err("no bus"))?;
        let domain = parts.next().unwrap_or("0000");
        let hex = |field: &str, max_len: usize, what: &'static str| -> Result<u32, AddressError> {
            if field.is_empty() || field.len() > max_len || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(what));
            }
            u32::from_str_radix(field, 16).map_err(|_| err(what))
        };
        let domain = hex(domain, 8, "bad domain")?;
        let bus = hex(bus, 2, "bad bus")? as u8;
        let device = hex(device, 2, "bad device")?;
        if device > 0x1f {
            return Err(err("device above 1f"));
        }
        let function = hex(function, 1, "bad function")?;
        if function > 7 {
            return Err(err("function above 7"));
        }
        Ok(PciAddress { domain, bus, device: device as u8, function: function as u8 })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_any_domain() {
        let a: PciAddress = "10000:e1:1f.7".parse().expect("parse");
        assert_eq!((a.domain, a.bus, a.device, a.function), (0x10000, 0xe1, 0x1f, 7));
        assert_eq!(a.to_string(), "10000:e1:1f.7");
        let b: PciAddress = "0000:3B:00.1".parse().expect("parse");
        assert_eq!(b.to_string(), "0000:3b:00.1");
        let c: PciAddress = "3b:00.1".parse().expect("short form");
        assert_eq!(b, c);
        assert!(b < a);
    }

    #[test]
    fn rejects_garbage() {
        for bad in
            ["", "0000:3b:00", "0000:3b:20.0", "0000:3b:00.8", "zz:00.0", "0000:3b:0x.0", "123456789:00:00.0", ".1"]
        {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad:?} must be refused");
        }
        let e = "0000:3b:00.9".parse::<PciAddress>().expect_err("bad");
        assert!(e.to_string().contains("0000:3b:00.9"), "{e}");
    }
}
