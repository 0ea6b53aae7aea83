// How a KeyRecord is written into SqliteStore's api_keys table: the INSERT of every
// column and the binding of its parameters, both derived from src/record_fields.hpp.
// Header-only and free of the library's internals, so the benchmark's bulk loader
// writes its rows exactly as the store does.
// Thread-safety: pure functions over a statement the caller holds alone. Ownership: the
// text and blob parameters point into `record` (SQLITE_STATIC): it must outlive the step.
#ifndef APIKEYS_SRC_SQLITE_RECORD_CODEC_HPP
#define APIKEYS_SRC_SQLITE_RECORD_CODEC_HPP

#include <sqlite3.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "apikeys/types.hpp"
#include "record_fields.hpp"
#include "scope.hpp"

namespace apikeys::detail::sqlite {

// INSERT INTO api_keys (every column) VALUES (?1, ..., ?n), in table order.
inline std::string insert_sql() {
  return "INSERT INTO api_keys (" + column_list(Columns::all) + ") VALUES (" + parameter_list('?') +
         ")";
}

// Binds parameter i + 1 to the i-th field, one overload per FieldKind. The first
// failure's SQLite result code is kept in `rc`.
class RecordBinder {
 public:
  explicit RecordBinder(sqlite3_stmt* s) noexcept : s_(s) {}

  void operator()(const RecordField&, const Uuid& v) {
    const std::string text = v.to_string();  // copied by SQLite (SQLITE_TRANSIENT)
    keep(sqlite3_bind_text(s_, next(), text.data(), static_cast<int>(text.size()),
                           SQLITE_TRANSIENT));
  }
  void operator()(const RecordField&, const std::string& v) {
    if (v.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
      next();
      keep(SQLITE_TOOBIG);
      return;
    }
    keep(sqlite3_bind_text(s_, next(), v.data(), static_cast<int>(v.size()), SQLITE_STATIC));
  }
  void operator()(const RecordField&, const std::array<std::uint8_t, 32>& v) {
    keep(sqlite3_bind_blob(s_, next(), v.data(), static_cast<int>(v.size()), SQLITE_STATIC));
  }
  void operator()(const RecordField&, std::uint32_t v) {
    keep(sqlite3_bind_int64(s_, next(), static_cast<std::int64_t>(v)));
  }
  void operator()(const RecordField&, KeyStatus v) {
    keep(sqlite3_bind_int(s_, next(), static_cast<int>(v)));
  }
  void operator()(const RecordField&, TimePoint v) {
    keep(sqlite3_bind_int64(s_, next(), to_unix_millis(v)));
  }
  void operator()(const RecordField&, const std::optional<TimePoint>& v) {
    keep(v ? sqlite3_bind_int64(s_, next(), to_unix_millis(*v)) : sqlite3_bind_null(s_, next()));
  }

  void operator()(const RecordField&, const std::vector<std::string>& v) {
    const std::string text = join_scopes(v);  // copied by SQLite (SQLITE_TRANSIENT)
    keep(sqlite3_bind_text(s_, next(), text.data(), static_cast<int>(text.size()),
                           SQLITE_TRANSIENT));
  }
  void operator()(const RecordField&, std::uint64_t v) {
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      next();
      keep(SQLITE_RANGE);
      return;
    }
    keep(sqlite3_bind_int64(s_, next(), static_cast<std::int64_t>(v)));
  }
  void operator()(const RecordField& f, const std::optional<Uuid>& v) {
    if (v) {
      (*this)(f, *v);
    } else {
      keep(sqlite3_bind_null(s_, next()));
    }
  }

  [[nodiscard]] int rc() const noexcept { return rc_; }

 private:
  int next() noexcept { return ++index_; }
  void keep(int rc) noexcept {
    if (rc_ == SQLITE_OK) rc_ = rc;
  }

  sqlite3_stmt* s_;
  int index_ = 0;
  int rc_ = SQLITE_OK;
};

// Binds every field of `record` to insert_sql()'s parameters; returns SQLITE_OK or the
// first failure's result code. REQUIRES: `record` outlives the statement's next step.
inline int bind_record(sqlite3_stmt* s, const KeyRecord& record) {
  RecordBinder binder(s);
  for_each_field(record, binder);
  return binder.rc();
}

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_RECORD_CODEC_HPP
