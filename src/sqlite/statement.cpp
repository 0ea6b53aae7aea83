#include "sqlite/statement.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace apikeys::detail::sqlite {

Error translate(std::string_view op, const SQLite::Exception& e) {
  const int code = e.getErrorCode();
  const int extended = e.getExtendedErrorCode();
  ErrorCode out = ErrorCode::storage;
  if (code >= 0) {
    switch (code & 0xff) {
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        out = ErrorCode::busy;
        break;
      case SQLITE_CONSTRAINT:
        if (extended == SQLITE_CONSTRAINT_UNIQUE || extended == SQLITE_CONSTRAINT_PRIMARYKEY) {
          out = ErrorCode::already_exists;
        }
        break;
      default:
        break;
    }
  }
  return Error(out, fmt::format("SqliteStore {} failed: {}", op, e.what()));
}

[[noreturn]] void corrupt(const char* op, const char* what) {
  throw Error(ErrorCode::storage, fmt::format("SqliteStore {} failed: corrupt record: {}", op, what));
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

Uuid read_uuid(sqlite3_stmt* s, int i, const char* op, const char* what) {
  std::optional<Uuid> id = Uuid::parse(read_text_view(s, i, op, what));
  if (!id) corrupt(op, what);
  return *id;
}

std::int64_t read_int(sqlite3_stmt* s, int i, const char* op, const char* what) {
  if (sqlite3_column_type(s, i) != SQLITE_INTEGER) corrupt(op, what);
  return sqlite3_column_int64(s, i);
}

std::optional<TimePoint> read_optional_time(sqlite3_stmt* s, int i, const char* op,
                                            const char* what) {
  if (sqlite3_column_type(s, i) == SQLITE_NULL) return std::nullopt;
  return from_unix_millis(read_int(s, i, op, what));
}

KeyInfo read_info(sqlite3_stmt* s, const char* op, int first,
                  const std::string_view* public_key) {
  KeyInfo info;
  int c = first;
  info.key_id = read_uuid(s, c++, op, "key_id is not a UUID");
  info.account_id = read_uuid(s, c++, op, "account_id is not a UUID");
  if (public_key != nullptr) {
    info.public_key.assign(*public_key);
  } else {
    info.public_key.assign(read_text_view(s, c++, op, "public_key is not text"));
  }
  info.title.assign(read_text_view(s, c++, op, "title is not text"));
  info.description.assign(read_text_view(s, c++, op, "description is not text"));
  const std::int64_t status = read_int(s, c++, op, "status is not an integer");
  if (status != static_cast<std::int64_t>(KeyStatus::active) &&
      status != static_cast<std::int64_t>(KeyStatus::revoked)) {
    corrupt(op, "unknown status");
  }
  info.status = static_cast<KeyStatus>(status);
  info.created_at = from_unix_millis(read_int(s, c++, op, "created_at is not an integer"));
  info.expires_at = read_optional_time(s, c++, op, "expires_at is not an integer");
  info.last_used_at = read_optional_time(s, c, op, "last_used_at is not an integer");
  return info;
}

Digest read_digest(sqlite3_stmt* s, int column, const char* op) {
  Digest d;
  if (sqlite3_column_type(s, column) != SQLITE_BLOB ||
      sqlite3_column_bytes(s, column) != static_cast<int>(d.bytes.size())) {
    corrupt(op, "digest is not 32 bytes");
  }
  const void* bytes = sqlite3_column_blob(s, column);
  if (bytes == nullptr) corrupt(op, "digest is not 32 bytes");
  std::memcpy(d.bytes.data(), bytes, d.bytes.size());
  const std::int64_t pepper = read_int(s, column + 1, op, "pepper_id is not an integer");
  if (pepper < 0 || pepper > std::numeric_limits<std::uint32_t>::max()) {
    corrupt(op, "pepper_id out of range");
  }
  d.pepper_id = static_cast<std::uint32_t>(pepper);
  return d;
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
  const auto timeout = std::clamp<std::chrono::milliseconds::rep>(
      o.busy_timeout.count(), 0, std::numeric_limits<int>::max());
  SQLite::Database db(path, flags, static_cast<int>(timeout));

  const auto cache_kib = std::min<std::size_t>(o.cache_size_kib, 1u << 30);
  const auto mmap = std::min<std::size_t>(o.mmap_size, std::numeric_limits<std::int64_t>::max());
  // Negative cache_size is in KiB. Only integers are formatted into these pragmas.
  db.exec(fmt::format("PRAGMA cache_size = -{}; PRAGMA mmap_size = {}; PRAGMA synchronous = {};",
                      cache_kib, mmap, o.durable ? "FULL" : "NORMAL"));
  if (role == Role::reader) db.exec("PRAGMA query_only = 1");
  return db;
}


}  // namespace apikeys::detail::sqlite
