#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // build time, not the core: reading schema files is its job.

//! Generates Keel's Kafka message types from the schema files in `core/schema/`.
//!
//! One description per message (see `core/schema/README.md` for the format) becomes a Rust
//! struct per Kafka struct, with a decoder, an encoder and, for tests, a random-value
//! generator, all version-aware. The output goes to `$OUT_DIR/messages.rs` and is included by
//! `src/protocol/messages.rs`. The generator has no dependencies: it is plain text in, plain
//! text out, and it fails the build with the file and line of any schema mistake.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new("schema");
    println!("cargo:rerun-if-changed=schema");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("core/schema exists")
        .map(|entry| entry.expect("readable schema dir").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "schema"))
        .collect();
    files.sort();
    let mut apis = Vec::new();
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(path).expect("readable schema file");
        match parse_api(&text) {
            Ok(api) => apis.push(api),
            Err((line, message)) => panic!("{}:{}: {}", path.display(), line, message),
        }
    }
    apis.sort_by_key(|api| api.key);
    let code = generate(&apis);
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR set by cargo")).join("messages.rs");
    std::fs::write(out, code).expect("writable OUT_DIR");
}

// ---------------------------------------------------------------------------------------------
// The schema model.

#[derive(Clone, Copy, Debug, PartialEq)]
struct Range {
    lo: i16,
    hi: i16,
}

impl Range {
    fn intersect(self, other: Range) -> Range {
        Range {
            lo: self.lo.max(other.lo),
            hi: self.hi.min(other.hi),
        }
    }
    fn is_empty(self) -> bool {
        self.lo > self.hi
    }
    /// A Rust condition on `version` that holds inside this range, given that `version` is
    /// already known to lie in `within`.
    fn condition(self, within: Range) -> String {
        if self.is_empty() {
            return "false".into();
        }
        let lo = self.lo > within.lo;
        let hi = self.hi < within.hi;
        match (lo, hi) {
            (false, false) => "true".into(),
            (true, false) => format!("version >= {}", self.lo),
            (false, true) => format!("version <= {}", self.hi),
            (true, true) => format!("({}..={}).contains(&version)", self.lo, self.hi),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prim {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U16,
    F64,
    Uuid,
    String,
    Bytes,
    Records,
}

#[derive(Clone, Debug)]
enum Ty {
    Prim(Prim),
    Array(Box<Ty>),
    Struct(String),
}

#[derive(Clone, Debug)]
struct Field {
    name: String,
    ty: Ty,
    versions: Range,
    nullable: Option<Range>,
    tag: Option<u32>,
    default: Option<String>,
    compact_never: bool,
}

#[derive(Clone, Debug)]
struct StructDef {
    name: String,
    /// Versions in which the struct exists (its parent field's versions).
    versions: Range,
    fields: Vec<Field>,
    top_level: bool,
}

struct MessageDef {
    name: String,
    structs: Vec<StructDef>,
}

struct Api {
    name: String,
    key: i16,
    versions: Range,
    flexible_from: Option<i16>,
    request: MessageDef,
    response: MessageDef,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

type ParseResult<T> = Result<T, (usize, String)>;

struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

fn parse_api(text: &str) -> ParseResult<Api> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let spaces = raw.len() - raw.trim_start_matches(' ').len();
        if spaces % 2 != 0 || raw.starts_with('\t') {
            return Err((index + 1, "indent by two spaces per level".into()));
        }
        lines.push(Line {
            number: index + 1,
            indent: spaces / 2,
            text: trimmed,
        });
    }
    let first = lines.first().ok_or((1, "empty schema".to_string()))?;
    let mut words = first.text.split_whitespace();
    if words.next() != Some("api") {
        return Err((
            first.number,
            "expected `api NAME key=N versions=A-B flexible=F+`".into(),
        ));
    }
    let name = words
        .next()
        .ok_or((first.number, "api needs a name".to_string()))?
        .to_string();
    let (mut key, mut versions, mut flexible_from, mut flexible_seen) = (None, None, None, false);
    for word in words {
        let (k, v) = word
            .split_once('=')
            .ok_or((first.number, format!("expected key=value, got {word}")))?;
        match k {
            "key" => {
                key = Some(
                    v.parse::<i16>()
                        .map_err(|e| (first.number, e.to_string()))?,
                )
            }
            "versions" => versions = Some(parse_range(v, None).map_err(|e| (first.number, e))?),
            "flexible" => {
                flexible_seen = true;
                if v != "none" {
                    let lo = v
                        .strip_suffix('+')
                        .ok_or((first.number, "flexible=F+ or flexible=none".to_string()))?;
                    flexible_from = Some(
                        lo.parse::<i16>()
                            .map_err(|e| (first.number, e.to_string()))?,
                    );
                }
            }
            other => return Err((first.number, format!("unknown api attribute {other}"))),
        }
    }
    let key = key.ok_or((first.number, "api needs key=".to_string()))?;
    let versions = versions.ok_or((first.number, "api needs versions=".to_string()))?;
    if !flexible_seen {
        return Err((first.number, "api needs flexible=".into()));
    }
    let mut index = 1;
    let mut messages = BTreeMap::new();
    while index < lines.len() {
        let line = &lines[index];
        if line.indent != 0 || !(line.text == "request" || line.text == "response") {
            return Err((line.number, "expected `request` or `response`".into()));
        }
        let kind = line.text;
        index += 1;
        let message_name = format!(
            "{name}{}",
            if kind == "request" {
                "Request"
            } else {
                "Response"
            }
        );
        let mut structs = Vec::new();
        let fields = parse_fields(&lines, &mut index, 1, versions, &message_name, &mut structs)?;
        structs.push(StructDef {
            name: message_name.clone(),
            versions,
            fields,
            top_level: true,
        });
        if messages
            .insert(
                kind,
                MessageDef {
                    name: message_name,
                    structs,
                },
            )
            .is_some()
        {
            return Err((line.number, format!("{kind} given twice")));
        }
    }
    let request = messages
        .remove("request")
        .ok_or((first.number, "no request".to_string()))?;
    let response = messages
        .remove("response")
        .ok_or((first.number, "no response".to_string()))?;
    Ok(Api {
        name,
        key,
        versions,
        flexible_from,
        request,
        response,
    })
}

fn parse_range(text: &str, within: Option<Range>) -> Result<Range, String> {
    let range = if let Some(lo) = text.strip_suffix('+') {
        Range {
            lo: lo
                .parse()
                .map_err(|_| format!("bad version range {text}"))?,
            hi: i16::MAX,
        }
    } else if let Some((lo, hi)) = text.split_once('-') {
        Range {
            lo: lo
                .parse()
                .map_err(|_| format!("bad version range {text}"))?,
            hi: hi
                .parse()
                .map_err(|_| format!("bad version range {text}"))?,
        }
    } else {
        let v = text
            .parse()
            .map_err(|_| format!("bad version range {text}"))?;
        Range { lo: v, hi: v }
    };
    Ok(match within {
        Some(outer) => range.intersect(outer),
        None => range,
    })
}

/// A struct used again in more versions than where it was defined (Kafka's
/// AddPartitionsToTxn names one struct in its v0-3 and v4+ forms): it and the fields that
/// took its versions (no range of their own) exist in the wider range too, and so do the
/// structs of those fields.
fn widen_struct(structs: &mut [StructDef], name: &str, wider: Range) {
    let Some(at) = structs.iter().position(|s| s.name == name) else {
        return;
    };
    let old = structs[at].versions;
    if old == wider {
        return;
    }
    structs[at].versions = wider;
    let mut nested = Vec::new();
    for field in &mut structs[at].fields {
        if field.versions == old {
            field.versions = wider;
            let mut ty = &field.ty;
            while let Ty::Array(inner) = ty {
                ty = inner;
            }
            if let Ty::Struct(inner) = ty {
                nested.push(inner.clone());
            }
        }
    }
    for inner in nested {
        widen_struct(structs, &inner, wider);
    }
}

fn parse_prim(word: &str) -> Option<Prim> {
    Some(match word {
        "bool" => Prim::Bool,
        "i8" => Prim::I8,
        "i16" => Prim::I16,
        "i32" => Prim::I32,
        "i64" => Prim::I64,
        "u16" => Prim::U16,
        "f64" => Prim::F64,
        "uuid" => Prim::Uuid,
        "string" => Prim::String,
        "bytes" => Prim::Bytes,
        "records" => Prim::Records,
        _ => return None,
    })
}

fn parse_fields(
    lines: &[Line<'_>],
    index: &mut usize,
    indent: usize,
    parent_versions: Range,
    message: &str,
    structs: &mut Vec<StructDef>,
) -> ParseResult<Vec<Field>> {
    let mut fields: Vec<Field> = Vec::new();
    while *index < lines.len() && lines[*index].indent >= indent {
        let line = &lines[*index];
        if line.indent > indent {
            return Err((line.number, "indented too far".into()));
        }
        *index += 1;
        let (name, rest) = line
            .text
            .split_once(':')
            .ok_or((line.number, "expected `name: type ...`".to_string()))?;
        let name = name.trim().to_string();
        if fields.iter().any(|f| f.name == name) {
            return Err((line.number, format!("field {name} given twice")));
        }
        // A quoted default may contain spaces: take it off the end first.
        let mut rest = rest.trim().to_string();
        let mut default = None;
        if let Some(at) = rest.find("default=\"") {
            let quoted = rest[at + "default=".len()..].to_string();
            if !quoted.ends_with('"') || quoted.len() < 2 {
                return Err((line.number, "a quoted default must end the line".into()));
            }
            default = Some(quoted);
            rest.truncate(at);
        }
        let mut words = rest.split_whitespace();
        let ty_word = words
            .next()
            .ok_or((line.number, "field needs a type".to_string()))?;
        let (ty, struct_name) =
            if let Some(inner) = ty_word.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                match parse_prim(inner) {
                    Some(p) => (Ty::Array(Box::new(Ty::Prim(p))), None),
                    None => (
                        Ty::Array(Box::new(Ty::Struct(inner.to_string()))),
                        Some(inner.to_string()),
                    ),
                }
            } else {
                match parse_prim(ty_word) {
                    Some(p) => (Ty::Prim(p), None),
                    None => (Ty::Struct(ty_word.to_string()), Some(ty_word.to_string())),
                }
            };
        let mut versions = parent_versions;
        let mut nullable = None;
        let mut tag = None;
        let mut compact_never = false;
        for word in words {
            if let Some(v) = word.strip_prefix('v') {
                versions = parse_range(v, Some(parent_versions)).map_err(|e| (line.number, e))?;
            } else if let Some(v) = word.strip_prefix("null=") {
                nullable = Some(parse_range(v, None).map_err(|e| (line.number, e))?);
            } else if let Some(v) = word.strip_prefix("tag=") {
                tag = Some(v.parse::<u32>().map_err(|e| (line.number, e.to_string()))?);
            } else if let Some(v) = word.strip_prefix("default=") {
                default = Some(v.to_string());
            } else if word == "flex=none" {
                compact_never = true;
            } else {
                return Err((line.number, format!("unknown field attribute {word}")));
            }
        }
        if versions.is_empty() {
            return Err((
                line.number,
                format!("field {name} has no version inside its parent's"),
            ));
        }
        let nullable = nullable
            .map(|n| n.intersect(versions))
            .filter(|n| !n.is_empty());
        if nullable.is_some()
            && matches!(ty, Ty::Prim(p) if !matches!(p, Prim::String | Prim::Bytes | Prim::Records))
        {
            return Err((
                line.number,
                "only strings, bytes, records, arrays and structs are nullable".into(),
            ));
        }
        let has_children = *index < lines.len() && lines[*index].indent > indent;
        if let Some(struct_name) = struct_name {
            if has_children {
                if structs.iter().any(|s| s.name == struct_name) {
                    return Err((line.number, format!("struct {struct_name} defined twice")));
                }
                let children = parse_fields(lines, index, indent + 1, versions, message, structs)?;
                structs.push(StructDef {
                    name: struct_name,
                    versions,
                    fields: children,
                    top_level: false,
                });
            } else {
                let Some(existing) = structs.iter_mut().find(|s| s.name == struct_name) else {
                    return Err((
                        line.number,
                        format!("struct {struct_name} used before it is defined"),
                    ));
                };
                let wider = Range {
                    lo: existing.versions.lo.min(versions.lo),
                    hi: existing.versions.hi.max(versions.hi),
                };
                widen_struct(structs, &struct_name, wider);
            }
        } else if has_children {
            return Err((
                lines[*index].number,
                "only struct fields have children".into(),
            ));
        }
        if default.as_deref() == Some("null") && nullable.is_none() {
            return Err((line.number, "default=null needs a nullable field".into()));
        }
        fields.push(Field {
            name,
            ty,
            versions,
            nullable,
            tag,
            default,
            compact_never,
        });
    }
    let _ = message;
    Ok(fields)
}

// ---------------------------------------------------------------------------------------------
// Generation.

fn base_type(ty: &Ty) -> String {
    match ty {
        Ty::Prim(p) => match p {
            Prim::Bool => "bool",
            Prim::I8 => "i8",
            Prim::I16 => "i16",
            Prim::I32 => "i32",
            Prim::I64 => "i64",
            Prim::U16 => "u16",
            Prim::F64 => "f64",
            Prim::Uuid => "Uuid",
            Prim::String => "String",
            Prim::Bytes | Prim::Records => "Bytes",
        }
        .to_string(),
        Ty::Array(inner) => format!("Vec<{}>", base_type(inner)),
        Ty::Struct(name) => name.clone(),
    }
}

fn field_type(field: &Field) -> String {
    if field.nullable.is_some() {
        format!("Option<{}>", base_type(&field.ty))
    } else {
        base_type(&field.ty)
    }
}

fn zero_value(ty: &Ty) -> String {
    match ty {
        Ty::Prim(p) => match p {
            Prim::Bool => "false",
            Prim::I8 | Prim::I16 | Prim::I32 | Prim::I64 | Prim::U16 => "0",
            Prim::F64 => "0.0",
            Prim::Uuid => "Uuid::default()",
            Prim::String => "String::new()",
            Prim::Bytes | Prim::Records => "Bytes::new()",
        }
        .to_string(),
        Ty::Array(_) => "Vec::new()".into(),
        Ty::Struct(name) => format!("{name}::default()"),
    }
}

fn default_value(field: &Field) -> String {
    let base = match field.default.as_deref() {
        None => zero_value(&field.ty),
        Some("null") => return "None".into(),
        Some(text) if text.starts_with('"') => match &field.ty {
            Ty::Prim(Prim::String) => format!("String::from({text})"),
            _ => panic!("field {}: a quoted default needs a string", field.name),
        },
        Some(text) => match &field.ty {
            Ty::Prim(Prim::F64) if !text.contains('.') => format!("{text}.0"),
            Ty::Prim(_) => text.to_string(),
            _ => panic!("field {}: default {text} does not fit its type", field.name),
        },
    };
    if field.nullable.is_some() {
        format!("Some({base})")
    } else {
        base
    }
}

struct Ctx<'a> {
    api: &'a Api,
    message: &'a MessageDef,
}

impl Ctx<'_> {
    fn flexible_range(&self) -> Option<Range> {
        self.api.flexible_from.map(|lo| Range {
            lo,
            hi: self.api.versions.hi,
        })
    }
    fn compact(&self, field: &Field) -> &'static str {
        if field.compact_never || self.api.flexible_from.is_none() {
            "false"
        } else {
            "flexible"
        }
    }
    fn path(&self, owner: &StructDef, field: &Field) -> String {
        if owner.top_level {
            format!("{}.{}", self.message.name, field.name)
        } else {
            format!("{}.{}.{}", self.message.name, owner.name, field.name)
        }
    }
}

/// An expression that reads one non-null value of `ty` from `buf`.
fn read_value(ctx: &Ctx<'_>, ty: &Ty, field: &Field, path: &str) -> String {
    let err = format!(".map_err(|e| e.at(\"{path}\", version))?");
    let compact = ctx.compact(field);
    match ty {
        Ty::Prim(p) => match p {
            Prim::Bool => format!("wire::read_bool(buf){err}"),
            Prim::I8 => format!("wire::read_i8(buf){err}"),
            Prim::I16 => format!("wire::read_i16(buf){err}"),
            Prim::I32 => format!("wire::read_i32(buf){err}"),
            Prim::I64 => format!("wire::read_i64(buf){err}"),
            Prim::U16 => format!("wire::read_u16(buf){err}"),
            Prim::F64 => format!("wire::read_f64(buf){err}"),
            Prim::Uuid => format!("wire::read_uuid(buf){err}"),
            Prim::String => format!("wire::read_string(buf, {compact}){err}"),
            Prim::Bytes | Prim::Records => format!("wire::read_bytes(buf, {compact}){err}"),
        },
        Ty::Array(inner) => {
            let element = read_value(ctx, inner, field, path);
            let elem_ty = base_type(inner);
            format!(
                "{{ let count = wire::read_array_len(buf, {compact}){err}.ok_or(WireError::UnexpectedNull.at(\"{path}\", version))?; \
                 let mut items = Vec::with_capacity(wire::prealloc_count::<{elem_ty}>(count, buf.len())); \
                 for _ in 0..count {{ items.push({element}); }} items }}"
            )
        }
        Ty::Struct(name) => format!("{name}::decode_body(buf, version)?"),
    }
}

/// Statements that read `field` into `this.<name>`.
fn read_field(ctx: &Ctx<'_>, owner: &StructDef, field: &Field) -> String {
    let path = ctx.path(owner, field);
    let err = format!(".map_err(|e| e.at(\"{path}\", version))?");
    let compact = ctx.compact(field);
    let name = &field.name;
    let Some(nullable) = field.nullable else {
        return format!(
            "this.{name} = {};",
            read_value(ctx, &field.ty, field, &path)
        );
    };
    let null_ok = nullable.condition(owner.versions);
    let read = match &field.ty {
        Ty::Prim(Prim::String) => format!("wire::read_nullable_string(buf, {compact}){err}"),
        Ty::Prim(Prim::Bytes | Prim::Records) => format!("wire::read_nullable_bytes(buf, {compact}){err}"),
        Ty::Array(inner) => {
            let element = read_value(ctx, inner, field, &path);
            let elem_ty = base_type(inner);
            format!(
                "match wire::read_array_len(buf, {compact}){err} {{ None => None, Some(count) => {{ \
                 let mut items = Vec::with_capacity(wire::prealloc_count::<{elem_ty}>(count, buf.len())); \
                 for _ in 0..count {{ items.push({element}); }} Some(items) }} }}"
            )
        }
        Ty::Struct(name) => format!(
            "if wire::read_i8(buf){err} < 0 {{ None }} else {{ Some({name}::decode_body(buf, version)?) }}"
        ),
        Ty::Prim(_) => unreachable!("checked at parse time"),
    };
    format!(
        "this.{name} = {read}; if this.{name}.is_none() && !({null_ok}) {{ return Err(WireError::UnexpectedNull.at(\"{path}\", version)); }}"
    )
}

/// An expression (`Result<(), EncodeError>` statements) that writes one non-null value.
fn write_value(ctx: &Ctx<'_>, ty: &Ty, field: &Field, path: &str, value: &str) -> String {
    let err = format!(".map_err(|e| e.encoding(\"{path}\", version))?");
    let compact = ctx.compact(field);
    // `value` is a reference expression; copy types are written by value.
    let copied = match value.strip_prefix('&') {
        Some(place) => place.to_string(),
        None => format!("*{value}"),
    };
    let value = &value;
    match ty {
        Ty::Prim(p) => match p {
            Prim::Bool => format!("wire::write_bool(buf, {copied});"),
            Prim::I8 => format!("wire::write_i8(buf, {copied});"),
            Prim::I16 => format!("wire::write_i16(buf, {copied});"),
            Prim::I32 => format!("wire::write_i32(buf, {copied});"),
            Prim::I64 => format!("wire::write_i64(buf, {copied});"),
            Prim::U16 => format!("wire::write_u16(buf, {copied});"),
            Prim::F64 => format!("wire::write_f64(buf, {copied});"),
            Prim::Uuid => format!("wire::write_uuid(buf, {value});"),
            Prim::String => format!("wire::write_string(buf, {value}, {compact}){err};"),
            Prim::Bytes | Prim::Records => {
                format!("wire::write_bytes(buf, {value}, {compact}){err};")
            }
        },
        Ty::Array(inner) => {
            let element = write_value(ctx, inner, field, path, "item");
            format!(
                "wire::write_array_len(buf, Some(({value}).len()), {compact}){err}; for item in ({value}).iter() {{ {element} }}"
            )
        }
        Ty::Struct(_) => format!("({value}).encode_body(buf, version)?;"),
    }
}

fn write_field(ctx: &Ctx<'_>, owner: &StructDef, field: &Field) -> String {
    let path = ctx.path(owner, field);
    let err = format!(".map_err(|e| e.encoding(\"{path}\", version))?");
    let compact = ctx.compact(field);
    let name = &field.name;
    let Some(nullable) = field.nullable else {
        return write_value(ctx, &field.ty, field, &path, &format!("&self.{name}"));
    };
    let null_ok = nullable.condition(owner.versions);
    let null_write = match &field.ty {
        Ty::Prim(Prim::String) => {
            format!("wire::write_nullable_string(buf, None, {compact}){err};")
        }
        Ty::Prim(Prim::Bytes | Prim::Records) => {
            format!("wire::write_nullable_bytes(buf, None, {compact}){err};")
        }
        Ty::Array(_) => format!("wire::write_array_len(buf, None, {compact}){err};"),
        Ty::Struct(_) => "wire::write_i8(buf, -1);".into(),
        Ty::Prim(_) => unreachable!("checked at parse time"),
    };
    let some_prefix = if matches!(field.ty, Ty::Struct(_)) {
        "wire::write_i8(buf, 1);"
    } else {
        ""
    };
    let some_write = write_value(ctx, &field.ty, field, &path, "value");
    format!(
        "match &self.{name} {{ \
           None if {null_ok} => {{ {null_write} }} \
           None => return Err(WireError::UnexpectedNull.encoding(\"{path}\", version)), \
           Some(value) => {{ {some_prefix} {some_write} }} \
         }}"
    )
}

fn random_value(ty: &Ty) -> String {
    match ty {
        Ty::Prim(p) => match p {
            Prim::Bool => "g.bool()",
            Prim::I8 => "g.i8()",
            Prim::I16 => "g.i16()",
            Prim::I32 => "g.i32()",
            Prim::I64 => "g.i64()",
            Prim::U16 => "g.u16()",
            Prim::F64 => "g.f64()",
            Prim::Uuid => "g.uuid()",
            Prim::String => "g.string()",
            Prim::Bytes | Prim::Records => "g.bytes()",
        }
        .to_string(),
        Ty::Array(inner) => format!("(0..g.count()).map(|_| {}).collect()", random_value(inner)),
        Ty::Struct(name) => format!("{name}::random(g, version)"),
    }
}

fn generate_struct(ctx: &Ctx<'_>, def: &StructDef, out: &mut String) {
    let flexible = ctx.flexible_range();
    let has_tags = flexible.is_some();
    let flexible_cond = match flexible {
        Some(range) => range.condition(ctx.api.versions),
        None => "false".into(),
    };
    let tagged: Vec<&Field> = {
        let mut t: Vec<&Field> = def.fields.iter().filter(|f| f.tag.is_some()).collect();
        t.sort_by_key(|f| f.tag);
        t
    };
    for pair in tagged.windows(2) {
        assert!(
            pair[0].tag != pair[1].tag,
            "{}: duplicate tag {:?}",
            def.name,
            pair[0].tag
        );
    }

    // The struct.
    writeln!(out, "#[derive(Debug, Clone, PartialEq)]").unwrap();
    writeln!(out, "pub struct {} {{", def.name).unwrap();
    for field in &def.fields {
        let versions = if field.versions.hi == i16::MAX || field.versions.hi >= ctx.api.versions.hi
        {
            format!("{}+", field.versions.lo)
        } else {
            format!("{}-{}", field.versions.lo, field.versions.hi)
        };
        let tag = field.tag.map(|t| format!(", tag {t}")).unwrap_or_default();
        writeln!(out, "    /// Versions {versions}{tag}.").unwrap();
        writeln!(out, "    pub {}: {},", field.name, field_type(field)).unwrap();
    }
    if has_tags {
        writeln!(
            out,
            "    /// Tagged fields this version of Keel does not know, kept byte for byte."
        )
        .unwrap();
        writeln!(out, "    pub unknown_tagged_fields: TaggedFields,").unwrap();
    }
    writeln!(out, "}}\n").unwrap();

    // Default.
    writeln!(
        out,
        "impl Default for {} {{\n    fn default() -> Self {{\n        Self {{",
        def.name
    )
    .unwrap();
    for field in &def.fields {
        writeln!(out, "            {}: {},", field.name, default_value(field)).unwrap();
    }
    if has_tags {
        writeln!(
            out,
            "            unknown_tagged_fields: TaggedFields::new(),"
        )
        .unwrap();
    }
    writeln!(out, "        }}\n    }}\n}}\n").unwrap();

    writeln!(out, "impl {} {{", def.name).unwrap();

    // Decode.
    writeln!(
        out,
        "    #[allow(unused_variables, clippy::let_and_return)]"
    )
    .unwrap();
    writeln!(
        out,
        "    pub(crate) fn decode_body(buf: &mut Bytes, version: i16) -> Result<Self, DecodeError> {{"
    )
    .unwrap();
    writeln!(out, "        let flexible = {flexible_cond};").unwrap();
    writeln!(out, "        let mut this = Self::default();").unwrap();
    for field in def.fields.iter().filter(|f| f.tag.is_none()) {
        let cond = field.versions.condition(def.versions);
        writeln!(
            out,
            "        if {cond} {{ {} }}",
            read_field(ctx, def, field)
        )
        .unwrap();
    }
    if has_tags {
        let tag_path = if def.top_level {
            format!("{}.tagged_fields", ctx.message.name)
        } else {
            format!("{}.{}.tagged_fields", ctx.message.name, def.name)
        };
        let err = format!(".map_err(|e| e.at(\"{tag_path}\", version))?");
        writeln!(out, "        if flexible {{").unwrap();
        writeln!(out, "            let count = wire::read_uvarint(buf){err};").unwrap();
        writeln!(out, "            for _ in 0..count {{").unwrap();
        writeln!(
            out,
            "                let tag = wire::read_uvarint(buf){err};"
        )
        .unwrap();
        writeln!(
            out,
            "                let size = wire::read_uvarint(buf){err} as usize;"
        )
        .unwrap();
        writeln!(
            out,
            "                let mut value = wire::read_exact(buf, size){err};"
        )
        .unwrap();
        writeln!(out, "                match tag {{").unwrap();
        for field in &tagged {
            let cond = field.versions.condition(def.versions);
            let tag = field.tag.unwrap();
            writeln!(
                out,
                "                    {tag} if {cond} => {{ let buf = &mut value; {} }}",
                read_field(ctx, def, field)
            )
            .unwrap();
        }
        writeln!(
            out,
            "                    _ => {{ this.unknown_tagged_fields.insert(tag, value); }}"
        )
        .unwrap();
        writeln!(out, "                }}\n            }}\n        }}").unwrap();
    }
    writeln!(out, "        Ok(this)\n    }}\n").unwrap();

    // Encode.
    writeln!(out, "    #[allow(unused_variables)]").unwrap();
    writeln!(
        out,
        "    pub(crate) fn encode_body(&self, buf: &mut BytesMut, version: i16) -> Result<(), EncodeError> {{"
    )
    .unwrap();
    writeln!(out, "        let flexible = {flexible_cond};").unwrap();
    for field in def.fields.iter().filter(|f| f.tag.is_none()) {
        let cond = field.versions.condition(def.versions);
        writeln!(
            out,
            "        if {cond} {{ {} }}",
            write_field(ctx, def, field)
        )
        .unwrap();
    }
    if has_tags {
        writeln!(out, "        if flexible {{").unwrap();
        writeln!(
            out,
            "            let mut count = self.unknown_tagged_fields.len();"
        )
        .unwrap();
        for field in &tagged {
            let cond = field.versions.condition(def.versions);
            writeln!(
                out,
                "            let write_{0} = {cond} && self.{0} != {1};",
                field.name,
                default_value(field)
            )
            .unwrap();
            writeln!(out, "            count += write_{} as usize;", field.name).unwrap();
        }
        writeln!(out, "            wire::write_uvarint(buf, count as u32);").unwrap();
        writeln!(
            out,
            "            let mut unknown = self.unknown_tagged_fields.iter().peekable();"
        )
        .unwrap();
        for field in &tagged {
            let tag = field.tag.unwrap();
            if tag > 0 {
                writeln!(
                    out,
                    "            while let Some((tag, value)) = unknown.next_if(|(tag, _)| **tag < {tag}) {{ write_tagged(buf, *tag, value); }}"
                )
                .unwrap();
            }
            writeln!(out, "            if write_{} {{", field.name).unwrap();
            writeln!(
                out,
                "                let mut value = BytesMut::new(); {{ let buf = &mut value; {} }}",
                write_field(ctx, def, field)
            )
            .unwrap();
            writeln!(out, "                write_tagged(buf, {tag}, &value);").unwrap();
            writeln!(out, "            }}").unwrap();
        }
        writeln!(
            out,
            "            for (tag, value) in unknown {{ write_tagged(buf, *tag, value); }}"
        )
        .unwrap();
        writeln!(out, "        }}").unwrap();
    }
    writeln!(out, "        Ok(())\n    }}\n").unwrap();

    // Random values, for the property tests.
    writeln!(
        out,
        "    #[cfg(test)]\n    #[allow(unused_variables, unused_mut)]"
    )
    .unwrap();
    writeln!(
        out,
        "    pub(crate) fn random(g: &mut crate::protocol::testgen::Gen, version: i16) -> Self {{"
    )
    .unwrap();
    writeln!(out, "        let flexible = {flexible_cond};").unwrap();
    writeln!(out, "        let mut this = Self::default();").unwrap();
    for field in &def.fields {
        let cond = field.versions.condition(def.versions);
        let value = random_value(&field.ty);
        let assign = match field.nullable {
            Some(nullable) => format!(
                "this.{} = if ({}) && g.one_in(5) {{ None }} else {{ Some({value}) }};",
                field.name,
                nullable.condition(def.versions)
            ),
            None => format!("this.{} = {value};", field.name),
        };
        let cond = if field.tag.is_some() {
            format!("{cond} && flexible && !g.one_in(3)")
        } else {
            cond
        };
        writeln!(out, "        if {cond} {{ {assign} }}").unwrap();
    }
    if has_tags {
        writeln!(
            out,
            "        if flexible && g.one_in(6) {{ this.unknown_tagged_fields.insert(g.unknown_tag(), g.bytes()); }}"
        )
        .unwrap();
    }
    writeln!(out, "        this\n    }}").unwrap();
    writeln!(out, "}}\n").unwrap();
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn generate_message(api: &Api, message: &MessageDef, is_request: bool, out: &mut String) {
    let module = snake(&message.name);
    let ctx = Ctx { api, message };
    writeln!(
        out,
        "/// {} (api key {}), versions {}-{}.",
        message.name, api.key, api.versions.lo, api.versions.hi
    )
    .unwrap();
    writeln!(out, "#[allow(unused_mut, unused_variables, clippy::let_and_return, clippy::needless_borrow, clippy::nonminimal_bool, clippy::overly_complex_bool_expr, clippy::match_single_binding, clippy::derivable_impls, clippy::partialeq_to_none, clippy::bool_comparison)]").unwrap();
    writeln!(out, "pub mod {module} {{").unwrap();
    writeln!(out, "#[allow(unused_imports)] use super::*;\n").unwrap();
    for def in &message.structs {
        generate_struct(&ctx, def, out);
    }
    let kind = if is_request { "Request" } else { "Response" };
    writeln!(
        out,
        "impl crate::protocol::Message for {name} {{
    const NAME: &'static str = \"{name}\";
    const API_KEY: ApiKey = ApiKey::{api};
    const KIND: MessageKind = MessageKind::{kind};
    fn decode(buf: &mut Bytes, version: i16) -> Result<Self, DecodeError> {{
        ApiKey::{api}.check_version(version).map_err(|e| e.at(\"{name}\", version))?;
        Self::decode_body(buf, version)
    }}
    fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), EncodeError> {{
        ApiKey::{api}.check_version(version).map_err(|e| e.encoding(\"{name}\", version))?;
        self.encode_body(buf, version)
    }}
}}",
        name = message.name,
        api = api.name,
    )
    .unwrap();
    writeln!(out, "}}\npub use {module}::{};\n", message.name).unwrap();
}

fn generate(apis: &[Api]) -> String {
    let mut out = String::new();
    out.push_str("// Generated by core/build.rs from core/schema/*.schema. Do not edit.\n\n");
    for api in apis {
        generate_message(api, &api.request, true, &mut out);
        generate_message(api, &api.response, false, &mut out);
    }

    // ApiKey.
    writeln!(out, "/// Every Kafka API Keel speaks.").unwrap();
    writeln!(
        out,
        "#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]\n#[repr(i16)]"
    )
    .unwrap();
    writeln!(out, "pub enum ApiKey {{").unwrap();
    for api in apis {
        writeln!(out, "    {} = {},", api.name, api.key).unwrap();
    }
    writeln!(out, "}}\n").unwrap();
    writeln!(out, "impl ApiKey {{").unwrap();
    writeln!(
        out,
        "    pub const ALL: [ApiKey; {}] = [{}];",
        apis.len(),
        apis.iter()
            .map(|a| format!("ApiKey::{}", a.name))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    writeln!(
        out,
        "    pub fn from_i16(key: i16) -> Option<ApiKey> {{\n        match key {{"
    )
    .unwrap();
    for api in apis {
        writeln!(
            out,
            "            {} => Some(ApiKey::{}),",
            api.key, api.name
        )
        .unwrap();
    }
    writeln!(out, "            _ => None,\n        }}\n    }}").unwrap();
    writeln!(
        out,
        "    pub fn name(self) -> &'static str {{\n        match self {{"
    )
    .unwrap();
    for api in apis {
        writeln!(out, "            ApiKey::{0} => \"{0}\",", api.name).unwrap();
    }
    writeln!(out, "        }}\n    }}").unwrap();
    writeln!(
        out,
        "    /// The versions Keel decodes and encodes: (min, max)."
    )
    .unwrap();
    writeln!(
        out,
        "    pub fn versions(self) -> (i16, i16) {{\n        match self {{"
    )
    .unwrap();
    for api in apis {
        writeln!(
            out,
            "            ApiKey::{} => ({}, {}),",
            api.name, api.versions.lo, api.versions.hi
        )
        .unwrap();
    }
    writeln!(out, "        }}\n    }}").unwrap();
    writeln!(
        out,
        "    /// The first flexible version (compact encodings, tagged fields), if any."
    )
    .unwrap();
    writeln!(
        out,
        "    pub fn flexible_from(self) -> Option<i16> {{\n        match self {{"
    )
    .unwrap();
    for api in apis {
        let f = api
            .flexible_from
            .map(|v| format!("Some({v})"))
            .unwrap_or("None".into());
        writeln!(out, "            ApiKey::{} => {f},", api.name).unwrap();
    }
    writeln!(out, "        }}\n    }}").unwrap();
    writeln!(out, "}}\n").unwrap();

    // Request and Response.
    for (kind, suffix) in [("Request", "Request"), ("Response", "Response")] {
        writeln!(out, "/// Any {} Keel speaks, decoded.", kind.to_lowercase()).unwrap();
        writeln!(
            out,
            "#[derive(Debug, Clone, PartialEq)]\npub enum {kind} {{"
        )
        .unwrap();
        for api in apis {
            writeln!(out, "    {0}({0}{suffix}),", api.name).unwrap();
        }
        writeln!(out, "}}\n").unwrap();
        writeln!(out, "impl {kind} {{").unwrap();
        writeln!(
            out,
            "    pub fn api_key(&self) -> ApiKey {{\n        match self {{"
        )
        .unwrap();
        for api in apis {
            writeln!(out, "            {kind}::{0}(_) => ApiKey::{0},", api.name).unwrap();
        }
        writeln!(out, "        }}\n    }}").unwrap();
        writeln!(
            out,
            "    /// Decodes the body of a {} of `api_key` at `version`.",
            kind.to_lowercase()
        )
        .unwrap();
        writeln!(out, "    pub fn decode(api_key: ApiKey, version: i16, buf: &mut Bytes) -> Result<Self, DecodeError> {{\n        Ok(match api_key {{").unwrap();
        for api in apis {
            writeln!(out, "            ApiKey::{0} => {kind}::{0}(<{0}{suffix} as crate::protocol::Message>::decode(buf, version)?),", api.name).unwrap();
        }
        writeln!(out, "        }})\n    }}").unwrap();
        writeln!(out, "    pub fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), EncodeError> {{\n        match self {{").unwrap();
        for api in apis {
            writeln!(
                out,
                "            {kind}::{}(m) => crate::protocol::Message::encode(m, buf, version),",
                api.name
            )
            .unwrap();
        }
        writeln!(out, "        }}\n    }}").unwrap();
        writeln!(out, "    #[cfg(test)]\n    pub(crate) fn random(g: &mut crate::protocol::testgen::Gen, api_key: ApiKey, version: i16) -> Self {{\n        match api_key {{").unwrap();
        for api in apis {
            writeln!(
                out,
                "            ApiKey::{0} => {kind}::{0}({0}{suffix}::random(g, version)),",
                api.name
            )
            .unwrap();
        }
        writeln!(out, "        }}\n    }}").unwrap();
        writeln!(out, "}}\n").unwrap();
    }
    out
}
