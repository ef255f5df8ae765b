//! Number decoding that follows the protocol's leniency rule: a decoder must accept a float where
//! an int is expected (and the other way round) when the value fits. Plugins written in Python or
//! JavaScript often send `1000.0` for an int field, and serde's stock integer impls refuse floats.
//! (Floats already accept ints through serde's own `f64` impl.)

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// Accepts any MessagePack number (or nil, read as 0) that fits an `i64` exactly.
pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntVisitor {
        min: i64::MIN as i128,
        max: i64::MAX as i128,
        what: "an integer that fits in 64 signed bits",
    })
    .map(|v| v as i64)
}

/// Accepts any MessagePack number (or nil, read as 0) that fits an `i32` exactly.
pub fn i32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    d.deserialize_any(IntVisitor {
        min: i32::MIN as i128,
        max: i32::MAX as i128,
        what: "an integer that fits in 32 signed bits",
    })
    .map(|v| v as i32)
}

/// Accepts any MessagePack number (or nil, read as 0) that fits a `u64` exactly.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(IntVisitor {
        min: 0,
        max: u64::MAX as i128,
        what: "a non-negative integer that fits in 64 bits",
    })
    .map(|v| v as u64)
}

struct IntVisitor {
    min: i128,
    max: i128,
    what: &'static str,
}

impl IntVisitor {
    fn check<E: de::Error>(&self, v: i128) -> Result<i128, E> {
        if v < self.min || v > self.max {
            return Err(E::custom(format!(
                "number {v} is out of range: expected {}",
                self.what
            )));
        }
        Ok(v)
    }
}

impl<'de> Visitor<'de> for IntVisitor {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        self.check(v as i128)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        self.check(v as i128)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
        // Only whole numbers within range convert; 1.5 for a count is a plugin bug worth reporting.
        if v.fract() != 0.0 || !v.is_finite() || v < self.min as f64 || v > self.max as f64 {
            return Err(E::custom(format!(
                "number {v} cannot be used here: expected {}",
                self.what
            )));
        }
        self.check(v as i128)
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<i128, E> {
        self.visit_f64(v as f64)
    }

    fn visit_unit<E: de::Error>(self) -> Result<i128, E> {
        Ok(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<i128, E> {
        Ok(0)
    }
}
