//! Request bodies read the way the OpenAPI document describes them.
//!
//! serde's derived `Deserialize` reads a struct from a JSON array as well as from an object
//! (`"retention": [null, null]` is a `RetentionDto` with both fields absent), while the document
//! says `type: object`. [`Strict`] is a deserializer over a parsed [`Value`] that reads structs
//! only from objects; everything else behaves as `serde_json` does. Internally tagged enums
//! (`SourceDto`) read their content with `deserialize_any`, which cannot tell them apart from
//! values that may be arrays: fields of such a type use [`object`].

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde_json::{Error, Value};

/// Reads a `T` from a parsed JSON value, structs from objects only. Errors carry the path of the
/// offending value (`source.url`, `outputs[0]`).
pub fn from_value<T: DeserializeOwned>(
    value: &Value,
) -> Result<T, serde_path_to_error::Error<Error>> {
    serde_path_to_error::deserialize(Strict(value))
}

/// `deserialize_with` for a field whose type is read through `deserialize_any` (an internally
/// tagged enum, tag `kind`): refuses anything but a JSON object and a tag that is not a string,
/// then reads the type strictly.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let map = serde_json::Map::<String, Value>::deserialize(d)?;
    // serde takes a variant's index for its name; the document says the tag is a string.
    if map.get(TAG).is_some_and(|t| !t.is_string()) {
        return Err(de::Error::custom(format!("`{TAG}` must be a string")));
    }
    T::deserialize(Strict(&Value::Object(map))).map_err(de::Error::custom)
}

use serde::Deserialize as _;

/// 2^64 and -2^63 as floats: integral floats in `[0, U64_END)` are read as `u64`, those in
/// `[I64_START, 0)` as `i64`.
const U64_END: f64 = 18_446_744_073_709_551_616.0;
const I64_START: f64 = -9_223_372_036_854_775_808.0;

/// The tag property of our internally tagged enums (`SourceDto`).
const TAG: &str = "kind";

/// A deserializer over a borrowed [`Value`] that reads structs only from objects.
#[derive(Clone, Copy)]
pub struct Strict<'a>(pub &'a Value);

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Unexpected::Unsigned(u)
            } else if let Some(i) = n.as_i64() {
                Unexpected::Signed(i)
            } else {
                Unexpected::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    // JSON Schema counts `9561.0` as an integer: the document's `integer` fields
                    // take it as serde's integers would take `9561` (fractions stay floats).
                    if f.fract() == 0.0 && (0.0..U64_END).contains(&f) {
                        visitor.visit_u64(f as u64)
                    } else if f.fract() == 0.0 && (I64_START..0.0).contains(&f) {
                        visitor.visit_i64(f as i64)
                    } else {
                        visitor.visit_f64(f)
                    }
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = Seq(items.iter());
                let v = visitor.visit_seq(&mut seq)?;
                match seq.0.len() {
                    0 => Ok(v),
                    left => Err(de::Error::invalid_length(
                        items.len() - left + 1,
                        &"fewer elements",
                    )),
                }
            }
            Value::Object(map) => visitor.visit_map(Map {
                iter: map.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Object(map) if map.len() == 1 => match map.iter().next() {
                Some((variant, value)) => visitor.visit_enum(Enum { variant, value }),
                None => Err(de::Error::invalid_type(Unexpected::Map, &visitor)),
            },
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier
    }
}

struct Seq<'a>(std::slice::Iter<'a, Value>);

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.as_str().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(Strict(v)),
            None => Err(de::Error::custom("a map value was read before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Enum<'a> {
    variant: &'a str,
    value: &'a Value,
}

impl<'de> EnumAccess<'de> for Enum<'de> {
    type Error = Error;
    type Variant = Strict<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Strict<'de>), Error> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, Strict(self.value)))
    }
}

impl<'de> VariantAccess<'de> for Strict<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(other), &"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &"tuple variant")),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::from_value;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: Option<u32>,
        #[serde(default)]
        b: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    enum Tagged {
        One { x: String },
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default, deserialize_with = "super::object")]
        tagged: Option<Tagged>,
    }

    #[test]
    fn structs_come_from_objects_only() {
        let ok: Outer = from_value(&json!({"inner": {"a": 1, "b": ["x"]}})).expect("object");
        assert_eq!(
            ok.inner,
            Some(Inner {
                a: Some(1),
                b: vec!["x".into()]
            })
        );
        let err = from_value::<Outer>(&json!({"inner": [null, []]})).expect_err("array");
        assert_eq!(err.path().to_string(), "inner");
        assert!(err.to_string().contains("invalid type: sequence"), "{err}");
        assert!(from_value::<Outer>(&json!([null])).is_err());
        assert!(from_value::<Inner>(&json!({"a": 1, "c": 2})).is_err());
        assert!(from_value::<Inner>(&json!({"a": -1})).is_err());
        assert!(from_value::<Inner>(&json!({"a": 1.5})).is_err());
        let err = from_value::<Inner>(&json!({"b": ["x", 2]})).expect_err("number");
        assert_eq!(err.path().to_string(), "b[1]");
    }

    #[test]
    fn tagged_enums_come_from_objects_only() {
        let ok: Outer = from_value(&json!({"tagged": {"kind": "one", "x": "y"}})).expect("tagged");
        assert_eq!(ok.tagged, Some(Tagged::One { x: "y".into() }));
        assert!(from_value::<Outer>(&json!({"tagged": ["one", "y"]})).is_err());
        assert!(from_value::<Outer>(&json!({"tagged": {"kind": 0, "x": "y"}})).is_err());
        assert!(from_value::<Outer>(&json!({"tagged": {"kind": "one", "x": ["y"]}})).is_err());
    }

    #[test]
    fn integral_floats_are_integers_as_json_schema_says() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Numbers {
            u: u64,
            i: i32,
            f: f64,
        }
        let n: Numbers = from_value(&json!({"u": 9561.0, "i": -3.0, "f": 2.0})).expect("integral");
        assert_eq!(
            n,
            Numbers {
                u: 9561,
                i: -3,
                f: 2.0
            }
        );
        let n: Numbers = from_value(&json!({"u": 7, "i": 1, "f": 2.5})).expect("plain");
        assert_eq!(n, Numbers { u: 7, i: 1, f: 2.5 });
        // A fraction is no integer, and a float beyond the type's range is refused as before.
        assert!(from_value::<Numbers>(&json!({"u": 1.5, "i": 0, "f": 0})).is_err());
        assert!(from_value::<Numbers>(&json!({"u": 1e20, "i": 0, "f": 0})).is_err());
        assert!(from_value::<Numbers>(&json!({"u": 0, "i": 3e9, "f": 0})).is_err());
        assert!(from_value::<Numbers>(&json!({"u": -1.0, "i": 0, "f": 0})).is_err());
    }
}
