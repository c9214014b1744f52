//! The GGUF v2/v3 reader: header, metadata, tensor infos and the data section, over a
//! memory map, with every count and offset checked against the bytes actually in the file.

use super::dequant;
use super::error::GgufError;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Nested metadata arrays deeper than this are refused (recursion would otherwise follow a
/// hostile file as deep as it likes and overflow the stack).
const MAX_ARRAY_DEPTH: u32 = 8;
/// Smallest encoding of one metadata entry: key length (8), type (4), a one-byte value.
const MIN_KV_BYTES: u64 = 13;
/// Smallest encoding of one tensor info: name length (8), n_dims (4), one dim (8), type (4),
/// offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;
/// `general.alignment` when the file does not set it.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A ggml tensor element type, by its numeric code in the file. Unknown codes are kept so
/// that errors can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// `(code, name, elements per block, bytes per block)` of every ggml type gguf-py knows.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);

    /// The types [`GgufFile::dequantize`] supports.
    pub const SUPPORTED: &'static [GgmlType] =
        &[Self::F32, Self::F16, Self::BF16, Self::Q8_0, Self::Q4_0, Self::Q4_1];

    /// ggml's name for this type (`"Q4_1"`), or `None` for a code ggml does not define.
    pub fn name(self) -> Option<&'static str> {
        GGML_TYPES.iter().find(|t| t.0 == self.0).map(|t| t.1)
    }

    /// `(elements per block, bytes per block)`, or `None` for an unknown code.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        GGML_TYPES.iter().find(|t| t.0 == self.0).map(|t| (t.2, t.3))
    }

    /// Whether amk can dequantize tensors of this type.
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// The supported types as a human-readable list, for error messages.
    pub fn supported_list() -> String {
        let names: Vec<String> = Self::SUPPORTED.iter().map(|t| t.to_string()).collect();
        names.join(", ")
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name().unwrap_or("unknown type"), self.0)
    }
}

/// One metadata value. Arrays keep their element type ([`MetaArray`]) so that memory stays
/// proportional to the bytes in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A typed metadata array; nested arrays may mix element types, as GGUF allows.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// GGUF's name of the element type, for error messages.
    pub fn element_type_name(&self) -> &'static str {
        match self {
            MetaArray::U8(_) => "uint8",
            MetaArray::I8(_) => "int8",
            MetaArray::U16(_) => "uint16",
            MetaArray::I16(_) => "int16",
            MetaArray::U32(_) => "uint32",
            MetaArray::I32(_) => "int32",
            MetaArray::F32(_) => "float32",
            MetaArray::Bool(_) => "bool",
            MetaArray::String(_) => "string",
            MetaArray::Array(_) => "array",
            MetaArray::U64(_) => "uint64",
            MetaArray::I64(_) => "int64",
            MetaArray::F64(_) => "float64",
        }
    }
}

impl MetaValue {
    /// GGUF's name of the value type (`"array of string"` for arrays), for error messages.
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::U8(_) => "uint8".into(),
            MetaValue::I8(_) => "int8".into(),
            MetaValue::U16(_) => "uint16".into(),
            MetaValue::I16(_) => "int16".into(),
            MetaValue::U32(_) => "uint32".into(),
            MetaValue::I32(_) => "int32".into(),
            MetaValue::F32(_) => "float32".into(),
            MetaValue::Bool(_) => "bool".into(),
            MetaValue::String(_) => "string".into(),
            MetaValue::Array(a) => format!("array of {}", a.element_type_name()),
            MetaValue::U64(_) => "uint64".into(),
            MetaValue::I64(_) => "int64".into(),
            MetaValue::F64(_) => "float64".into(),
        }
    }

    /// The value as an unsigned integer, if it is an integer of any width that is not
    /// negative (writers disagree on widths, so readers accept all of them).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float32 or float64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor's entry in the GGUF header, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The llama.cpp tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dims, fastest-varying first: `[ne0, ne1]` is `ne1` rows of `ne0` elements.
    pub dims: Vec<u64>,
    /// How the elements are stored.
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of elements.
    pub n_elements: u64,
    /// Number of bytes of data.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// The shape in PyTorch order (ggml dims reversed): `[ne1, ne0]` for a matrix.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Bytes(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Bytes(b) => b,
        }
    }
}

/// An opened, validated GGUF file: metadata and tensor infos parsed, every tensor's data range
/// checked to lie inside the file. Tensor data stays in the memory map until dequantized.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file through a read-only memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let file =
            std::fs::File::open(path).map_err(|e| GgufError::io(path, "open the GGUF file", e))?;
        let len = file.metadata().map_err(|e| GgufError::io(path, "stat the GGUF file", e))?.len();
        let storage = if len == 0 {
            // Mapping an empty file fails on some systems; an empty buffer gives the same
            // "truncated at the magic" error as any other short file.
            Storage::Bytes(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. If another process
            // truncates the file while it is mapped, reads may fault (SIGBUS); that is the
            // documented limitation of every memory-mapped model loader.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| GgufError::io(path, "memory-map the GGUF file", e))?;
            Storage::Mmap(map)
        };
        Self::parse(path.to_path_buf(), storage)
    }

    /// Parses a GGUF image already in memory; `path` only labels error messages. Meant for
    /// tests and fuzzing, which would otherwise write every case to disk.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<GgufFile, GgufError> {
        Self::parse(path.into(), Storage::Bytes(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<GgufFile, GgufError> {
        let header = parse_header(&path, storage.bytes())?;
        Ok(GgufFile {
            path,
            storage,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// The file's path (or the label given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// Tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The tensor info of `name`, if the file has that tensor.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Total size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The raw stored bytes of tensor `name` (range already validated at open).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            why: "requested tensor is not in the file".into(),
        })?;
        self.data_of(info)
    }

    fn data_of(&self, info: &GgufTensorInfo) -> Result<&[u8], GgufError> {
        let bytes = self.storage.bytes();
        let oob = || GgufError::TensorOutOfBounds {
            path: self.path.clone(),
            tensor: info.name.clone(),
            start: self.data_offset.saturating_add(info.offset),
            end: self.data_offset.saturating_add(info.offset).saturating_add(info.n_bytes),
            file_len: bytes.len() as u64,
        };
        let start = self.data_offset.checked_add(info.offset).ok_or_else(oob)?;
        let end = start.checked_add(info.n_bytes).ok_or_else(oob)?;
        let start = usize::try_from(start).map_err(|_| oob())?;
        let end = usize::try_from(end).map_err(|_| oob())?;
        bytes.get(start..end).ok_or_else(oob)
    }

    /// Dequantizes tensor `name` to f32 in row-major (PyTorch) order, bit-for-bit as gguf-py's
    /// `dequantize` does; other types give [`GgufError::UnsupportedTensorType`].
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            why: "requested tensor is not in the file".into(),
        })?;
        self.dequantize_info(info)
    }

    pub(crate) fn dequantize_info(&self, info: &GgufTensorInfo) -> Result<Vec<f32>, GgufError> {
        let data = self.data_of(info)?;
        dequant::dequantize(info.ggml_type, data).ok_or_else(|| GgufError::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ggml_type: info.ggml_type.to_string(),
            supported: GgmlType::supported_list(),
        })
    }

    /// The value of metadata key `key`, or [`GgufError::MissingKey`].
    pub fn get(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
            hint: String::new(),
        })
    }

    fn wrong(&self, key: &str, expected: &str, found: &MetaValue) -> GgufError {
        let found = match found {
            MetaValue::String(s) => format!("string {s:?}"),
            MetaValue::Array(a) => {
                format!("array of {} {} element(s)", a.len(), a.element_type_name())
            }
            v if v.as_u64().is_some() || v.as_f64().is_some() => format!("{} {v:?}", v.type_name()),
            v => v.type_name(),
        };
        GgufError::WrongKeyType {
            path: self.path.clone(),
            key: key.to_string(),
            expected: expected.to_string(),
            found,
        }
    }

    /// Key `key` as an unsigned integer that fits in u32 (any integer width accepted).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.get(key)?;
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.wrong(key, "an unsigned integer that fits in 32 bits", v))
    }

    /// Key `key` as a non-negative integer (any integer width accepted).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key)?;
        v.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// Key `key` as a float (float32, or float64 rounded to f32).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.get(key)?;
        match *v {
            MetaValue::F32(x) => Ok(x),
            MetaValue::F64(x) => Ok(x as f32),
            _ => Err(self.wrong(key, "a float32", v)),
        }
    }

    /// Key `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.get(key)? {
            MetaValue::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// Key `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            MetaValue::String(s) => Ok(s),
            v => Err(self.wrong(key, "a string", v)),
        }
    }

    /// Key `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        match self.get(key)? {
            MetaValue::Array(MetaArray::String(v)) => Ok(v),
            v => Err(self.wrong(key, "an array of string", v)),
        }
    }

    /// Key `key` as an array of int32 (as llama.cpp writes `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32], GgufError> {
        match self.get(key)? {
            MetaValue::Array(MetaArray::I32(v)) => Ok(v),
            v => Err(self.wrong(key, "an array of int32", v)),
        }
    }

    /// Like [`GgufFile::get_u32`], but `Ok(None)` when the key is absent.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.optional(key, Self::get_u32)
    }

    /// Like [`GgufFile::get_f32`], but `Ok(None)` when the key is absent.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.optional(key, Self::get_f32)
    }

    /// Like [`GgufFile::get_str`], but `Ok(None)` when the key is absent.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.optional(key, Self::get_str)
    }

    /// Like [`GgufFile::get_bool`], but `Ok(None)` when the key is absent.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.optional(key, Self::get_bool)
    }

    fn optional<'a, T>(
        &'a self,
        key: &str,
        get: impl Fn(&'a Self, &str) -> Result<T, GgufError>,
    ) -> Result<Option<T>, GgufError> {
        if self.metadata.contains_key(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// A bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

type Field<'f> = &'f dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.data.len().saturating_sub(self.pos) as u64
    }

    fn invalid(&self, field: Field<'_>, reason: String) -> GgufError {
        GgufError::Invalid { path: self.path.to_path_buf(), field: field(), reason }
    }

    fn take(&mut self, n: u64, field: Field<'_>) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated {
            path: self.path.to_path_buf(),
            field: field(),
            offset: self.pos as u64,
            needed: n,
            file_len: self.data.len() as u64,
        };
        if n > self.remaining() {
            return Err(truncated());
        }
        let n = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let out = self.data.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: Field<'_>) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, field: Field<'_>) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: Field<'_>) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: Field<'_>) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("{} (length)", field()))?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.invalid(field, format!("the string is not valid UTF-8 ({e})")))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in what is left of the
    /// file, before anything is allocated for them.
    fn check_count(
        &self,
        count: u64,
        min_bytes: u64,
        field: Field<'_>,
    ) -> Result<usize, GgufError> {
        let remaining = self.remaining();
        let fits = count.checked_mul(min_bytes).is_some_and(|need| need <= remaining);
        if !fits {
            return Err(self.invalid(
                field,
                format!(
                    "claims {count} item(s) of at least {min_bytes} byte(s) each, but only \
                     {remaining} byte(s) remain in the file (corrupt or hostile header)"
                ),
            ));
        }
        usize::try_from(count)
            .map_err(|_| self.invalid(field, format!("count {count} does not fit in memory")))
    }
}

/// Minimum encoded size of one value of GGUF value type `ty`, or `None` for an unknown type.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: u32,
    field: Field<'_>,
    depth: u32,
) -> Result<MetaValue, GgufError> {
    Ok(match ty {
        0 => MetaValue::U8(u8::from_le_bytes(c.array(field)?)),
        1 => MetaValue::I8(i8::from_le_bytes(c.array(field)?)),
        2 => MetaValue::U16(u16::from_le_bytes(c.array(field)?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array(field)?)),
        4 => MetaValue::U32(u32::from_le_bytes(c.array(field)?)),
        5 => MetaValue::I32(i32::from_le_bytes(c.array(field)?)),
        6 => MetaValue::F32(f32::from_le_bytes(c.array(field)?)),
        7 => MetaValue::Bool(read_bool(c, field)?),
        8 => MetaValue::String(c.string(field)?),
        9 => MetaValue::Array(read_array(c, field, depth)?),
        10 => MetaValue::U64(u64::from_le_bytes(c.array(field)?)),
        11 => MetaValue::I64(i64::from_le_bytes(c.array(field)?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array(field)?)),
        other => {
            return Err(c.invalid(field, format!("unknown value type code {other} (valid: 0..=12)")))
        }
    })
}

fn read_bool(c: &mut Cursor<'_>, field: Field<'_>) -> Result<bool, GgufError> {
    match c.array::<1>(field)? {
        [0] => Ok(false),
        [1] => Ok(true),
        [b] => Err(c.invalid(field, format!("bool byte is {b}, expected 0 or 1"))),
    }
}

fn fixed<const N: usize, T>(
    c: &mut Cursor<'_>,
    n: usize,
    field: Field<'_>,
    conv: fn([u8; N]) -> T,
) -> Result<Vec<T>, GgufError> {
    let bytes = c.take((n as u64).saturating_mul(N as u64), field)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|ch| {
            let mut a = [0u8; N];
            a.copy_from_slice(ch);
            conv(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor<'_>, field: Field<'_>, depth: u32) -> Result<MetaArray, GgufError> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(c.invalid(field, format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
    }
    let ty = c.u32(&|| format!("{} (array element type)", field()))?;
    let len = c.u64(&|| format!("{} (array length)", field()))?;
    let min = min_value_bytes(ty).ok_or_else(|| {
        c.invalid(field, format!("unknown array element type code {ty} (valid: 0..=12)"))
    })?;
    let n = c.check_count(len, min, &|| format!("{} (array length)", field()))?;
    Ok(match ty {
        0 => MetaArray::U8(c.take(len, field)?.to_vec()),
        1 => MetaArray::I8(fixed(c, n, field, i8::from_le_bytes)?),
        2 => MetaArray::U16(fixed(c, n, field, u16::from_le_bytes)?),
        3 => MetaArray::I16(fixed(c, n, field, i16::from_le_bytes)?),
        4 => MetaArray::U32(fixed(c, n, field, u32::from_le_bytes)?),
        5 => MetaArray::I32(fixed(c, n, field, i32::from_le_bytes)?),
        6 => MetaArray::F32(fixed(c, n, field, f32::from_le_bytes)?),
        10 => MetaArray::U64(fixed(c, n, field, u64::from_le_bytes)?),
        11 => MetaArray::I64(fixed(c, n, field, i64::from_le_bytes)?),
        12 => MetaArray::F64(fixed(c, n, field, f64::from_le_bytes)?),
        7 => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_bool(c, &|| format!("{}[{i}]", field()))?);
            }
            MetaArray::Bool(v)
        }
        8 => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&|| format!("{}[{i}]", field()))?);
            }
            MetaArray::String(v)
        }
        _ => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_array(c, &|| format!("{}[{i}]", field()), depth + 1)?);
            }
            MetaArray::Array(v)
        }
    })
}

fn parse_header(path: &Path, data: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { data, pos: 0, path };
    let magic: [u8; 4] = c.array(&|| "the magic (first 4 bytes)".into())?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { path: path.to_path_buf(), found: magic });
    }
    let version = c.u32(&|| "the version".into())?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (this looks like a big-endian GGUF file; only little-endian files are supported)"
        } else if version == 1 {
            " (GGUF v1 is obsolete; convert the model again with a current llama.cpp)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
            hint: hint.into(),
        });
    }
    let tensor_count = c.u64(&|| "the header's tensor_count".into())?;
    let kv_count = c.u64(&|| "the header's kv_count".into())?;
    c.check_count(kv_count, MIN_KV_BYTES, &|| "the header's kv_count".into())?;
    // Tensor infos follow the metadata, so the kv entries' minimum size is also needed.
    let tensor_room = c.remaining().saturating_sub(kv_count.saturating_mul(MIN_KV_BYTES));
    if tensor_count.checked_mul(MIN_TENSOR_INFO_BYTES).is_none_or(|need| need > tensor_room) {
        return Err(c.invalid(
            &|| "the header's tensor_count".into(),
            format!(
                "claims {tensor_count} tensor(s) of at least {MIN_TENSOR_INFO_BYTES} header bytes \
                 each, but only {tensor_room} byte(s) remain after the metadata (corrupt or hostile \
                 header)"
            ),
        ));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = c.string(&|| format!("the key of metadata entry {i}"))?;
        let ty = c.u32(&|| format!("the value type of metadata key '{key}'"))?;
        let value = read_value(&mut c, ty, &|| format!("the value of metadata key '{key}'"), 0)?;
        if metadata.contains_key(&key) {
            return Err(
                c.invalid(&|| format!("metadata key '{key}'"), "the key appears twice".into())
            );
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => a,
            _ => {
                return Err(c.invalid(
                    &|| "metadata key 'general.alignment'".into(),
                    format!("{v:?} is not a power of two between 1 and 2^30"),
                ))
            }
        },
    };

    let n_tensors =
        c.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, &|| "the header's tensor_count".into())?;
    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("the name of tensor info {i}"))?;
        let field = |what: &str| format!("the {what} of tensor '{name}' (tensor info {i})");
        let n_dims = c.u32(&|| field("n_dims"))?;
        if !(1..=4).contains(&n_dims) {
            return Err(c.invalid(&|| field("n_dims"), format!("{n_dims} is not in 1..=4")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| field(&format!("dim {d}")))?);
        }
        let ggml_type = GgmlType(c.u32(&|| field("ggml type"))?);
        let offset = c.u64(&|| field("data offset"))?;
        let (block, type_size) = ggml_type.block_layout().ok_or_else(|| {
            c.invalid(
                &|| field("ggml type"),
                format!("{ggml_type} is not a ggml type this reader knows"),
            )
        })?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                c.invalid(&|| field("dims"), format!("the product of {dims:?} overflows"))
            })?;
        let ne0 = dims.first().copied().unwrap_or(0);
        if ne0 % block != 0 {
            return Err(c.invalid(
                &|| field("dims"),
                format!("dim 0 = {ne0} is not a multiple of {ggml_type}'s block size {block}"),
            ));
        }
        let n_bytes = (n_elements / block).checked_mul(type_size).ok_or_else(|| {
            c.invalid(&|| field("dims"), format!("the byte size of {dims:?} overflows"))
        })?;
        if offset % alignment != 0 {
            return Err(c.invalid(
                &|| field("data offset"),
                format!("{offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        if tensors.iter().any(|t| t.name == name) {
            return Err(c.invalid(&|| field("name"), "the name appears twice".into()));
        }
        tensors.push(GgufTensorInfo { name, dims, ggml_type, offset, n_elements, n_bytes });
    }

    let pos = c.pos as u64;
    let data_offset = pos
        .checked_add(alignment - 1)
        .map(|p| p / alignment * alignment)
        .ok_or_else(|| c.invalid(&|| "the data section offset".into(), "overflows".into()))?;
    let file_len = data.len() as u64;
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(e)) if e <= file_len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}
