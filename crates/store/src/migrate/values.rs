//! One column's value on its way from SQLite to PostgreSQL: read from
//! SQLite's dynamic types, converted to the PostgreSQL column's type (the
//! type decides, not the value: SQLite keeps booleans as 0 and 1), bound
//! as a typed parameter, read back from PostgreSQL the same way, and
//! hashed in one canonical form on both sides for the checksums.

use crate::StoreError;
use rusqlite::types::ValueRef;
use tokio_postgres::types::ToSql;

/// A PostgreSQL column type the stores use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Text,
    BigInt,
    Int,
    SmallInt,
    Bool,
    Bytes,
    Float,
}

impl PgType {
    /// The type `information_schema.columns.data_type` names.
    pub fn from_name(name: &str) -> Option<PgType> {
        Some(match name {
            "text" | "character varying" => PgType::Text,
            "bigint" => PgType::BigInt,
            "integer" => PgType::Int,
            "smallint" => PgType::SmallInt,
            "boolean" => PgType::Bool,
            "bytea" => PgType::Bytes,
            "double precision" | "real" => PgType::Float,
            _ => return None,
        })
    }

    /// The name of an array of it, for `unnest($1::…[])`.
    pub fn array(self) -> &'static str {
        match self {
            PgType::Text => "text[]",
            PgType::BigInt => "bigint[]",
            PgType::Int => "integer[]",
            PgType::SmallInt => "smallint[]",
            PgType::Bool => "boolean[]",
            PgType::Bytes => "bytea[]",
            PgType::Float => "double precision[]",
        }
    }
}

/// A value in the form both sides are compared in.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
    Float(f64),
}

impl Value {
    /// SQLite's value converted to what column `column` of type `ty` holds.
    pub fn from_sqlite(v: ValueRef<'_>, ty: PgType, column: &str) -> Result<Value, StoreError> {
        let wrong = |what: &str| StoreError::Corrupt(format!("column {column}: {what} cannot go into a {ty:?} column"));
        Ok(match (v, ty) {
            (ValueRef::Null, _) => Value::Null,
            (ValueRef::Integer(i), PgType::Bool) => Value::Bool(i != 0),
            (ValueRef::Integer(i), PgType::BigInt | PgType::Int | PgType::SmallInt) => Value::Int(i),
            (ValueRef::Integer(i), PgType::Float) => Value::Float(i as f64),
            (ValueRef::Real(f), PgType::Float) => Value::Float(f),
            (ValueRef::Text(t), PgType::Text) => {
                let text = std::str::from_utf8(t).map_err(|_| wrong("text that is not UTF-8"))?;
                if text.contains('\0') {
                    return Err(wrong("text with a NUL character"));
                }
                Value::Text(text.to_string())
            }
            (ValueRef::Blob(b), PgType::Bytes) => Value::Bytes(b.to_vec()),
            (ValueRef::Text(t), PgType::Bytes) => Value::Bytes(t.to_vec()),
            (ValueRef::Integer(_), _) => return Err(wrong("an integer")),
            (ValueRef::Real(_), _) => return Err(wrong("a real number")),
            (ValueRef::Text(_), _) => return Err(wrong("text")),
            (ValueRef::Blob(_), _) => return Err(wrong("a blob")),
        })
    }

    /// The value of column `i` of a PostgreSQL row, read as `ty`.
    pub fn from_pg(row: &tokio_postgres::Row, i: usize, ty: PgType) -> Result<Value, StoreError> {
        let e = |e: tokio_postgres::Error| StoreError::Database(Box::new(e));
        Ok(match ty {
            PgType::Text => row.try_get::<_, Option<String>>(i).map_err(e)?.map_or(Value::Null, Value::Text),
            PgType::BigInt => row.try_get::<_, Option<i64>>(i).map_err(e)?.map_or(Value::Null, Value::Int),
            PgType::Int => row.try_get::<_, Option<i32>>(i).map_err(e)?.map_or(Value::Null, |v| Value::Int(v.into())),
            PgType::SmallInt => row.try_get::<_, Option<i16>>(i).map_err(e)?.map_or(Value::Null, |v| Value::Int(v.into())),
            PgType::Bool => row.try_get::<_, Option<bool>>(i).map_err(e)?.map_or(Value::Null, Value::Bool),
            PgType::Bytes => row.try_get::<_, Option<Vec<u8>>>(i).map_err(e)?.map_or(Value::Null, Value::Bytes),
            PgType::Float => row.try_get::<_, Option<f64>>(i).map_err(e)?.map_or(Value::Null, Value::Float),
        })
    }

    /// The parameter that binds it to a column of type `ty` (an integer
    /// out of the column's range is refused, not cut).
    pub fn param(&self, ty: PgType, column: &str) -> Result<Box<dyn ToSql + Sync + Send>, StoreError> {
        let range = || StoreError::Corrupt(format!("column {column}: {self:?} is out of the range of a {ty:?} column"));
        Ok(match (self, ty) {
            (Value::Null, PgType::Text) => Box::new(None::<String>),
            (Value::Null, PgType::BigInt) => Box::new(None::<i64>),
            (Value::Null, PgType::Int) => Box::new(None::<i32>),
            (Value::Null, PgType::SmallInt) => Box::new(None::<i16>),
            (Value::Null, PgType::Bool) => Box::new(None::<bool>),
            (Value::Null, PgType::Bytes) => Box::new(None::<Vec<u8>>),
            (Value::Null, PgType::Float) => Box::new(None::<f64>),
            (Value::Int(i), PgType::BigInt) => Box::new(*i),
            (Value::Int(i), PgType::Int) => Box::new(i32::try_from(*i).map_err(|_| range())?),
            (Value::Int(i), PgType::SmallInt) => Box::new(i16::try_from(*i).map_err(|_| range())?),
            (Value::Bool(b), PgType::Bool) => Box::new(*b),
            (Value::Text(t), PgType::Text) => Box::new(t.clone()),
            (Value::Bytes(b), PgType::Bytes) => Box::new(b.clone()),
            (Value::Float(f), PgType::Float) => Box::new(*f),
            _ => return Err(StoreError::Corrupt(format!("column {column}: {self:?} does not fit a {ty:?} column"))),
        })
    }

    /// Adds the value to a checksum, tagged and length-prefixed, so that no
    /// two rows hash alike by moving bytes between columns.
    pub fn hash_into(&self, digest: &mut ring::digest::Context) {
        match self {
            Value::Null => digest.update(&[0]),
            Value::Int(i) => {
                digest.update(&[1]);
                digest.update(&i.to_le_bytes());
            }
            Value::Bool(b) => digest.update(&[2, u8::from(*b)]),
            Value::Text(t) => {
                digest.update(&[3]);
                digest.update(&(t.len() as u64).to_le_bytes());
                digest.update(t.as_bytes());
            }
            Value::Bytes(b) => {
                digest.update(&[4]);
                digest.update(&(b.len() as u64).to_le_bytes());
                digest.update(b);
            }
            Value::Float(f) => {
                digest.update(&[5]);
                digest.update(&f.to_bits().to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_columns_type_decides() {
        assert_eq!(Value::from_sqlite(ValueRef::Integer(1), PgType::Bool, "c").ok(), Some(Value::Bool(true)));
        assert_eq!(Value::from_sqlite(ValueRef::Integer(0), PgType::Bool, "c").ok(), Some(Value::Bool(false)));
        assert_eq!(Value::from_sqlite(ValueRef::Integer(7), PgType::SmallInt, "c").ok(), Some(Value::Int(7)));
        assert_eq!(Value::from_sqlite(ValueRef::Blob(b"ab"), PgType::Bytes, "c").ok(), Some(Value::Bytes(b"ab".to_vec())));
        assert!(Value::from_sqlite(ValueRef::Text(b"x"), PgType::BigInt, "c").is_err());
        assert!(Value::from_sqlite(ValueRef::Text(b"a\0b"), PgType::Text, "c").is_err(), "PostgreSQL text holds no NUL");
        assert!(Value::from_sqlite(ValueRef::Text(&[0xff, 0xfe]), PgType::Text, "c").is_err());
    }

    #[test]
    fn integers_out_of_a_columns_range_are_refused() {
        assert!(Value::Int(i64::from(i32::MAX) + 1).param(PgType::Int, "c").is_err());
        assert!(Value::Int(40_000).param(PgType::SmallInt, "c").is_err());
        assert!(Value::Int(-5).param(PgType::Int, "c").is_ok());
    }

    #[test]
    fn checksums_tell_columns_apart() {
        let sum = |values: &[Value]| {
            let mut d = ring::digest::Context::new(&ring::digest::SHA256);
            values.iter().for_each(|v| v.hash_into(&mut d));
            d.finish().as_ref().to_vec()
        };
        let (ab, c) = (Value::Text("ab".into()), Value::Text("c".into()));
        let (a, bc) = (Value::Text("a".into()), Value::Text("bc".into()));
        assert_ne!(sum(&[ab, c]), sum(&[a, bc]));
        assert_ne!(sum(&[Value::Int(1)]), sum(&[Value::Bool(true)]));
        assert_ne!(sum(&[Value::Null]), sum(&[Value::Text(String::new())]));
    }
}
