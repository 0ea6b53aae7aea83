// Files that are not apikeys databases, for the tests that open them and must leave
// them byte for byte unchanged: other applications' SQLite databases (user_version 0, 1
// and 7, one in WAL mode, one with an api_keys table of its own) and random bytes; and
// the bytes of a file, to compare before and after.
// Thread-safety: plain functions. Ownership: the files are made in the caller's directory
// and removed with it.
#ifndef APIKEYS_TESTS_FOREIGN_FILES_HPP
#define APIKEYS_TESTS_FOREIGN_FILES_HPP

#include <cstddef>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "process_support.hpp"
#include "reliability_support.hpp"

namespace apikeys_test {

struct ForeignFile {
  std::string what;  // for test output
  std::string path;
};

// The whole content of the file at `path` ("" when it cannot be read).
inline std::string file_bytes(const std::string& path) { return read_file(path); }

// Makes the foreign files in `dir` (anything with file(name) -> path). Each SQLite file
// has a table of its own, with rows, and is closed cleanly (no -wal or -shm file left).
template <typename Dir>
std::vector<ForeignFile> make_foreign_files(const Dir& dir) {
  std::vector<ForeignFile> files;
  auto database = [&](const std::string& what, const std::string& name, const std::string& sql) {
    const std::string path = dir.file(name);
    RawDb(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE).exec(sql);
    files.push_back({what, path});
  };
  database("another application's database, user_version 0", "other-v0.db",
           "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
           "INSERT INTO users (name) VALUES ('ada'), ('grace');");
  database("another application's database, user_version 1", "other-v1.db",
           "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER);"
           "INSERT INTO orders (total) VALUES (10), (20);"
           "PRAGMA user_version = 1;");
  database("another application's WAL database, user_version 7", "other-v7.db",
           "PRAGMA journal_mode = WAL;"
           "CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB);"
           "INSERT INTO events (body) VALUES (randomblob(100));"
           "PRAGMA user_version = 7;");
  database("another application's api_keys table, user_version 1", "other-api-keys.db",
           "CREATE TABLE api_keys (id INTEGER PRIMARY KEY, token TEXT NOT NULL);"
           "INSERT INTO api_keys (token) VALUES ('theirs');"
           "PRAGMA user_version = 1;");

  const std::string random_path = dir.file("random.db");
  {
    std::mt19937 rng(20261202);
    std::string bytes(8192, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() & 0xff);
    std::ofstream out(random_path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + random_path);
  }
  files.push_back({"random bytes", random_path});
  return files;
}

// An empty (0-byte) file at `path`.
inline void make_empty_file(const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_FOREIGN_FILES_HPP
