#include "sqlite/statement.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <chrono>
#include <cstring>
#include <limits>
#include <optional>

#include "record_fields.hpp"
#include "scope.hpp"

namespace apikeys::detail::sqlite {

Error translate(std::string_view op, const SQLite::Exception& e) {
  const int code = e.getErrorCode();
  const int extended = e.getExtendedErrorCode();
  ErrorCode out = ErrorCode::storage;
  if (code >= 0) {
    switch (code & 0xff) {
      case SQLITE_BUSY:
      case SQLITE_LOCKED: out = ErrorCode::busy; break;
      case SQLITE_CONSTRAINT:
        if (extended == SQLITE_CONSTRAINT_UNIQUE || extended == SQLITE_CONSTRAINT_PRIMARYKEY) {
          out = ErrorCode::already_exists;
        }
        break;
      default: break;
    }
  }
  return Error(out, fmt::format("SqliteStore {} failed: {}", op, e.what()));
}

[[noreturn]] void corrupt(const char* op, const char* what) {
  throw Error(ErrorCode::storage,
              fmt::format("SqliteStore {} failed: corrupt record: {}", op, what));
}

std::string_view read_text_view(sqlite3_stmt* s, int i, const char* op, const char* what) {
  if (sqlite3_column_type(s, i) != SQLITE_TEXT) corrupt(op, what);
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
  const int n = sqlite3_column_bytes(s, i);
  if (p == nullptr) {
    if (n == 0) return {};
    throw Error(ErrorCode::storage, fmt::format("SqliteStore {} failed: out of memory", op));
  }
  return {p, static_cast<std::size_t>(n)};
}

std::int64_t read_int(sqlite3_stmt* s, int i, const char* op, const char* what) {
  if (sqlite3_column_type(s, i) != SQLITE_INTEGER) corrupt(op, what);
  return sqlite3_column_int64(s, i);
}

namespace {

[[noreturn]] void corrupt_field(const char* op, const RecordField& f, const char* problem) {
  throw Error(ErrorCode::storage,
              fmt::format("SqliteStore {} failed: corrupt record: {} {}", op, f.name, problem));
}

// Decodes the fields of a row, one overload per FieldKind, from column `column` on.
// `public_key`, when set, is the value of that field (find() compares the column with
// it and does not read it back).
struct RowDecoder {
  sqlite3_stmt* s = nullptr;
  const char* op = nullptr;
  int column = 0;
  // Set for a row of find_sql() (read_record()): public_key is not read back, and an
  // empty text column comes as empty_text_marker().
  const std::string_view* public_key = nullptr;

  std::int64_t integer(const RecordField& f) {
    if (sqlite3_column_type(s, column) != SQLITE_INTEGER) corrupt_field(op, f, "is not an integer");
    return sqlite3_column_int64(s, column++);
  }

  void operator()(const RecordField& f, Uuid& v) {
    if (sqlite3_column_type(s, column) != SQLITE_TEXT) corrupt_field(op, f, "is not a UUID");
    std::optional<Uuid> id = Uuid::parse(read_text_view(s, column++, op, "UUID"));
    if (!id) corrupt_field(op, f, "is not a UUID");
    v = *id;
  }
  // Only find()'s rows hold the empty-text marker; every other read takes text only.
  std::string_view text(const RecordField& f) {
    if (public_key != nullptr && empty_text_marker(s, column)) {
      ++column;
      return {};
    }
    if (sqlite3_column_type(s, column) != SQLITE_TEXT) corrupt_field(op, f, "is not text");
    return read_text_view(s, column++, op, "text");
  }
  void operator()(const RecordField& f, std::string& v) {
    if (public_key != nullptr && &f == &field(Field::public_key)) {
      v.assign(*public_key);
      return;
    }
    v.assign(text(f));
  }
  void operator()(const RecordField& f, std::array<std::uint8_t, 32>& v) {
    const void* bytes = sqlite3_column_type(s, column) == SQLITE_BLOB &&
                                sqlite3_column_bytes(s, column) == static_cast<int>(v.size())
                            ? sqlite3_column_blob(s, column)
                            : nullptr;
    if (bytes == nullptr) corrupt_field(op, f, "is not 32 bytes");
    std::memcpy(v.data(), bytes, v.size());
    ++column;
  }
  void operator()(const RecordField& f, std::uint32_t& v) {
    const std::int64_t n = integer(f);
    if (n < 0 || n > std::numeric_limits<std::uint32_t>::max()) {
      corrupt_field(op, f, "out of range");
    }
    v = static_cast<std::uint32_t>(n);
  }
  void operator()(const RecordField& f, KeyStatus& v) {
    const std::int64_t n = integer(f);
    if (n != static_cast<std::int64_t>(KeyStatus::active) &&
        n != static_cast<std::int64_t>(KeyStatus::revoked) &&
        n != static_cast<std::int64_t>(KeyStatus::disabled)) {
      corrupt(op, "unknown status");
    }
    v = static_cast<KeyStatus>(n);
  }
  void operator()(const RecordField& f, TimePoint& v) { v = from_unix_millis(integer(f)); }
  void operator()(const RecordField& f, std::optional<TimePoint>& v) {
    if (sqlite3_column_type(s, column) == SQLITE_NULL) {
      v.reset();
      ++column;
      return;
    }
    v = from_unix_millis(integer(f));
  }
  void operator()(const RecordField& f, std::vector<std::string>& v) { v = split_scopes(text(f)); }
  void operator()(const RecordField& f, std::uint64_t& v) {
    const std::int64_t n = integer(f);
    if (n < 1) corrupt_field(op, f, "out of range");
    v = static_cast<std::uint64_t>(n);
  }
  void operator()(const RecordField& f, std::optional<Uuid>& v) {
    if (sqlite3_column_type(s, column) == SQLITE_NULL) {
      v.reset();
      ++column;
      return;
    }
    Uuid id;
    (*this)(f, id);
    v = id;
  }
};

}  // namespace

KeyInfo read_info(sqlite3_stmt* s, const char* op) {
  KeyInfo info;
  for_each_info_field(info, RowDecoder{s, op, 0});
  return info;
}

void read_record(sqlite3_stmt* s, const char* op, int first, std::string_view public_key,
                 KeyRecord& record, Columns which) {
  assert(which == Columns::all || which == Columns::verdict);
  if (which == Columns::verdict) {
    for_each_verdict_field(record, RowDecoder{s, op, first, &public_key});
  } else {
    for_each_field(record, RowDecoder{s, op, first, &public_key});
  }
}

std::string filename_of(const std::string& path) {
  // SQLite reads a name that starts with "file:" as a URI when it was built to
  // (SQLITE_USE_URI, as Debian's is), flags or not: "file:keys.db?vfs=unix-none" would
  // open without locks, "?mode=memory" a private database per connection. As "./file:…"
  // it is the file of that name, as the caller wrote it.
  if (path.compare(0, 5, "file:") == 0) return "./" + path;
  return path;
}

SQLite::Database open_connection(const std::string& path, const SqliteStoreOptions& o, Role role,
                                 bool read_only, bool create) {
  int flags = SQLite::OPEN_NOMUTEX;  // Each connection is used by one thread at a time.
  if (read_only) {
    flags |= SQLite::OPEN_READONLY;
  } else {
    flags |= SQLite::OPEN_READWRITE;
    if (create) flags |= SQLite::OPEN_CREATE;
  }
  const auto timeout = std::clamp<std::chrono::milliseconds::rep>(o.busy_timeout.count(), 0,
                                                                  std::numeric_limits<int>::max());
  SQLite::Database db(filename_of(path), flags, static_cast<int>(timeout));

  const auto cache_kib = std::min<std::size_t>(o.cache_size_kib, 1u << 30);
  const auto mmap = std::min<std::size_t>(o.mmap_size, std::numeric_limits<std::int64_t>::max());
  // Negative cache_size is in KiB. Only integers are formatted into these pragmas.
  db.exec(fmt::format("PRAGMA cache_size = -{}; PRAGMA mmap_size = {}; PRAGMA synchronous = {};",
                      cache_kib, mmap, o.durable ? "FULL" : "NORMAL"));
  if (role == Role::reader) db.exec("PRAGMA query_only = 1");
  return db;
}

}  // namespace apikeys::detail::sqlite
