// Private to SqliteStore: the schema and its forward migrations, and how a file is
// identified as an apikeys database before anything is written to it.
// See doc/sqlite-store.md, rules on identification and migrations.
// Thread-safety: free functions over a connection the caller holds alone.
#ifndef APIKEYS_SRC_SQLITE_SCHEMA_HPP
#define APIKEYS_SRC_SQLITE_SCHEMA_HPP

#include <SQLiteCpp/Database.h>

#include <cstdint>
#include <string>

#include "apikeys/sqlite_store.hpp"

namespace apikeys::detail::sqlite {

// The schema version the migrations in schema.cpp end at (PRAGMA user_version).
extern const int kCurrentVersion;

// The marker in the header of every file this library initialises (PRAGMA
// application_id, bytes 68-71 of the file): "apik" in ASCII. Never change it: it is how
// the files of every later version are told from other applications' databases.
constexpr std::int32_t kApplicationId = 0x6170696B;

// Throws Error(storage) unless `db` has the api_keys and apikeys_meta tables.
void require_apikeys_tables(SQLite::Database& db);

// Identification (rules 15-18). Everything here only reads.

enum class FileKind {
  empty,    // a 0-byte file: ours to initialise, if the caller allows
  apikeys,  // marked as ours, or the exact schema of a release from before the marker
  foreign,  // anything else: never written to
};

struct Identity {
  FileKind kind = FileKind::foreign;
  int version = 0;      // PRAGMA user_version
  bool marked = false;  // PRAGMA application_id is kApplicationId
  std::string why;      // for `foreign`: what gave it away (header numbers only)
};

Identity identify(SQLite::Database& db);

// Throws Error(storage) unless `id` is a file this store may use, and (when
// `may_initialise`) an empty one it may initialise.
void require_usable(const Identity& id, const std::string& path, bool may_initialise);

// Identifies an existing file without writing to it or beside it (see schema.cpp).
Identity identify_read_only(const std::string& path, const SqliteStoreOptions& options);

// Brings the schema to kCurrentVersion and marks the file as ours (see schema.cpp).
void migrate(SQLite::Database& db, const std::string& path, bool may_initialise);

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_SCHEMA_HPP
