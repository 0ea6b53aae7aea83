// The one description of a key record as the bundled stores keep it: each field's
// column name, its SQL type in SQLite and in PostgreSQL, its kind (which says how it is
// bound and decoded) and the member of KeyRecord that holds it. Every column list of
// SqliteStore and PostgresStore (SELECT, INSERT, RETURNING), the benchmark's bulk loader
// and the tests that compare a store's schema with this table derive from it.
// Thread-safety and ownership: constants and pure functions only.
//
// Adding a field (see CONTRIBUTING.md, "Adding a field to keys"): a member of KeyInfo
// (include/apikeys/types.hpp), one line in APIKEYS_KEY_FIELDS below, and a migration
// step per store that adds the column with the types given here (src/sqlite/schema.cpp,
// src/postgres_store.cpp). Columns are appended: a field's place in this list is its
// place in the table. A new kind also needs a bind and a decode overload in each store.
#ifndef APIKEYS_SRC_RECORD_FIELDS_HPP
#define APIKEYS_SRC_RECORD_FIELDS_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "apikeys/types.hpp"

namespace apikeys::detail {

// How a field is stored, and so how each store binds and decodes it.
enum class FieldKind {
  uuid,           // Uuid: canonical text (SQLite TEXT, PostgreSQL uuid)
  text,           // std::string: UTF-8 text, never NULL
  digest_bytes,   // Digest::bytes: exactly 32 raw bytes
  pepper_id,      // Digest::pepper_id: an integer in [0, 2^32)
  status,         // KeyStatus: its integer value (active, revoked, disabled)
  time,           // TimePoint: Unix milliseconds, never NULL
  optional_time,  // std::optional<TimePoint>: Unix milliseconds, NULL for nullopt
  scopes,         // std::vector<std::string>: the scopes joined by spaces (detail::join_scopes)
  version,        // std::uint64_t: an integer in [1, 2^63)
  optional_uuid,  // std::optional<Uuid>: canonical text / uuid, NULL for nullopt
};

// X(column, sqlite_type, pg_type, kind, part, member, use): the column `column` holds
// KeyRecord::part.member, a FieldKind::kind. `part` is `info` (a KeyInfo field, shown by
// list, revoke and delete) or `digest` (read only by find()). `use` is `verdict` for a
// field a validation reads (Store::find_for_validation() must fill it) and `record` for
// one it does not. In table order.
#define APIKEYS_KEY_FIELDS(X)                                                     \
  X(key_id, "TEXT", "uuid", uuid, info, key_id, verdict)                          \
  X(account_id, "TEXT", "uuid", uuid, info, account_id, verdict)                  \
  X(public_key, "TEXT", "text", text, info, public_key, verdict)                  \
  X(digest, "BLOB", "bytea", digest_bytes, digest, bytes, verdict)                \
  X(pepper_id, "INTEGER", "bigint", pepper_id, digest, pepper_id, verdict)        \
  X(title, "TEXT", "text", text, info, title, record)                             \
  X(description, "TEXT", "text", text, info, description, record)                 \
  X(status, "INTEGER", "smallint", status, info, status, verdict)                 \
  X(created_at, "INTEGER", "bigint", time, info, created_at, record)              \
  X(expires_at, "INTEGER", "bigint", optional_time, info, expires_at, verdict)    \
  X(last_used_at, "INTEGER", "bigint", optional_time, info, last_used_at, record) \
  X(metadata, "TEXT", "text", text, info, metadata, verdict)                      \
  X(scopes, "TEXT", "text", scopes, info, scopes, verdict)                        \
  X(updated_at, "INTEGER", "bigint", time, info, updated_at, record)              \
  X(version, "INTEGER", "bigint", version, info, version, record)                 \
  X(rotated_from, "TEXT", "uuid", optional_uuid, info, rotated_from, record)      \
  X(rotated_to, "TEXT", "uuid", optional_uuid, info, rotated_to, record)

struct RecordField {
  const char* name;         // the column
  const char* sqlite_type;  // its declared type in SqliteStore's table
  const char* pg_type;      // its type in PostgresStore's table (information_schema's name)
  FieldKind kind;
  bool in_info;     // a KeyInfo field (else a Digest field)
  bool in_verdict;  // read by a validation (find_for_validation())

  [[nodiscard]] constexpr bool nullable() const noexcept {
    return kind == FieldKind::optional_time || kind == FieldKind::optional_uuid;
  }
};

// The fields by name: kRecordFields[static_cast<std::size_t>(Field::title)].
enum class Field : std::size_t {
#define APIKEYS_FIELD_ENUM(column, sqlite_type, pg_type, kind, part, member, use) column,
  APIKEYS_KEY_FIELDS(APIKEYS_FIELD_ENUM)
#undef APIKEYS_FIELD_ENUM
};

#define APIKEYS_FIELD_IS_verdict true
#define APIKEYS_FIELD_IS_record false
inline constexpr RecordField kRecordFields[] = {
#define APIKEYS_FIELD_ROW(column, sqlite_type, pg_type, kind, part, member, use) \
  {#column,                                                                      \
   sqlite_type,                                                                  \
   pg_type,                                                                      \
   FieldKind::kind,                                                              \
   std::is_same_v<KeyInfo, decltype(KeyRecord::part)>,                           \
   APIKEYS_FIELD_IS_##use},
    APIKEYS_KEY_FIELDS(APIKEYS_FIELD_ROW)
#undef APIKEYS_FIELD_ROW
};
#undef APIKEYS_FIELD_IS_verdict
#undef APIKEYS_FIELD_IS_record

inline constexpr std::size_t kFieldCount = std::size(kRecordFields);

constexpr const RecordField& field(Field f) noexcept {
  return kRecordFields[static_cast<std::size_t>(f)];
}

inline constexpr std::size_t kInfoFieldCount = [] {
  std::size_t n = 0;
  for (const RecordField& f : kRecordFields) n += f.in_info ? 1 : 0;
  return n;
}();

// The C++ type each kind is held in: checked against every member named above.
template <FieldKind K>
struct KindType;
template <>
struct KindType<FieldKind::uuid> {
  using type = Uuid;
};
template <>
struct KindType<FieldKind::text> {
  using type = std::string;
};
template <>
struct KindType<FieldKind::digest_bytes> {
  using type = std::array<std::uint8_t, 32>;
};
template <>
struct KindType<FieldKind::pepper_id> {
  using type = std::uint32_t;
};
template <>
struct KindType<FieldKind::status> {
  using type = KeyStatus;
};
template <>
struct KindType<FieldKind::time> {
  using type = TimePoint;
};
template <>
struct KindType<FieldKind::optional_time> {
  using type = std::optional<TimePoint>;
};

template <>
struct KindType<FieldKind::scopes> {
  using type = std::vector<std::string>;
};
template <>
struct KindType<FieldKind::version> {
  using type = std::uint64_t;
};
template <>
struct KindType<FieldKind::optional_uuid> {
  using type = std::optional<Uuid>;
};

#define APIKEYS_FIELD_CHECK(column, sqlite_type, pg_type, kind, part, member, use)                 \
  static_assert(std::is_same_v<decltype(KeyRecord::part.member), KindType<FieldKind::kind>::type>, \
                "record_fields.hpp: " #column " is not held in its kind's type");
APIKEYS_KEY_FIELDS(APIKEYS_FIELD_CHECK)
#undef APIKEYS_FIELD_CHECK

#define APIKEYS_FIELD_IF_info(...) __VA_ARGS__
#define APIKEYS_FIELD_IF_digest(...)
#define APIKEYS_FIELD_IF_verdict(...) __VA_ARGS__
#define APIKEYS_FIELD_IF_record(...)

// Calls f(const RecordField&, member) for every field of `record` (a KeyRecord, const or
// not), in table order. `f` overloads on the member's type, one overload per kind.
template <typename Record, typename F>
void for_each_field(Record& record, F&& f) {
#define APIKEYS_FIELD_VISIT(column, sqlite_type, pg_type, kind, part, member, use) \
  f(field(Field::column), record.part.member);
  APIKEYS_KEY_FIELDS(APIKEYS_FIELD_VISIT)
#undef APIKEYS_FIELD_VISIT
}

// The same over the fields a validation reads (`verdict`) only, in table order.
template <typename Record, typename F>
void for_each_verdict_field(Record& record, F&& f) {
#define APIKEYS_FIELD_VISIT(column, sqlite_type, pg_type, kind, part, member, use) \
  APIKEYS_FIELD_IF_##use(f(field(Field::column), record.part.member);)
  APIKEYS_KEY_FIELDS(APIKEYS_FIELD_VISIT)
#undef APIKEYS_FIELD_VISIT
}

// The same over the KeyInfo fields of `info` only, in table order.
template <typename Info, typename F>
void for_each_info_field(Info& info, F&& f) {
#define APIKEYS_FIELD_VISIT(column, sqlite_type, pg_type, kind, part, member, use) \
  APIKEYS_FIELD_IF_##part(f(field(Field::column), info.member);)
  APIKEYS_KEY_FIELDS(APIKEYS_FIELD_VISIT)
#undef APIKEYS_FIELD_VISIT
}

#undef APIKEYS_FIELD_IF_info
#undef APIKEYS_FIELD_IF_digest
#undef APIKEYS_FIELD_IF_verdict
#undef APIKEYS_FIELD_IF_record

// Every column; the KeyInfo ones; those a validation reads.
enum class Columns { all, info, verdict };

inline constexpr bool in_columns(Columns which, const RecordField& f) noexcept {
  return which == Columns::all || (which == Columns::info ? f.in_info : f.in_verdict);
}

// How many columns `which` has.
inline constexpr std::size_t column_count(Columns which) noexcept {
  std::size_t n = 0;
  for (const RecordField& f : kRecordFields) n += in_columns(which, f) ? 1 : 0;
  return n;
}

// "key_id, account_id, ...": the columns of `which`, in table order, each preceded by
// `prefix` (a table alias and a dot, or nothing), leaving out `skip` if given.
inline std::string column_list(Columns which, const char* prefix = "",
                               const RecordField* skip = nullptr) {
  std::string out;
  for (const RecordField& f : kRecordFields) {
    if (!in_columns(which, f) || &f == skip) continue;
    if (!out.empty()) out += ", ";
    out += prefix;
    out += f.name;
  }
  return out;
}

// "?1, ?2, ..." or "$1, $2, ...": one parameter per field, for an INSERT of every column.
inline std::string parameter_list(char marker) {
  std::string out;
  for (std::size_t i = 1; i <= kFieldCount; ++i) {
    if (i > 1) out += ", ";
    out += marker;
    out += std::to_string(i);
  }
  return out;
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_RECORD_FIELDS_HPP
