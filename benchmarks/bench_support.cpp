// Data sets and probes for apikeys_bench (see bench_support.hpp).
#include "bench_support.hpp"

#include <malloc.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "apikeys/sqlite_store.hpp"
#include "sqlite/record_codec.hpp"

namespace apikeys_bench {
namespace {

constexpr char kBase62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
// 2025-01-01T00:00:00Z, so created_at values are plausible and fixed.
constexpr std::int64_t kEpochMillis = 1'735'689'600'000;

void fill_key(char* out, const char* prefix, Rng& rng) {
  out[0] = prefix[0];
  out[1] = prefix[1];
  out[2] = '_';
  for (std::size_t i = 3; i < kKeyLength; ++i) out[i] = kBase62[rng.below(62)];
}

// A raw sqlite3 handle that closes itself.
struct Db {
  sqlite3* db = nullptr;
  explicit Db(const std::string& path, int flags = SQLITE_OPEN_READWRITE) {
    if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
      const std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
      sqlite3_close(db);
      throw std::runtime_error("cannot open " + path + ": " + msg);
    }
  }
  ~Db() { sqlite3_close(db); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  void exec(const std::string& sql) const {
    char* err = nullptr;
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      const std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw std::runtime_error("sqlite: " + msg + " in: " + sql);
    }
  }
};

struct Stmt {
  sqlite3_stmt* s = nullptr;
  Stmt(const Db& d, const char* sql) {
    if (sqlite3_prepare_v2(d.db, sql, -1, &s, nullptr) != SQLITE_OK) {
      throw std::runtime_error(std::string("sqlite prepare: ") + sqlite3_errmsg(d.db));
    }
  }
  ~Stmt() { sqlite3_finalize(s); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
};

void remove_database(const std::string& path) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    std::filesystem::remove(path + suffix, ec);
  }
}

}  // namespace

KeySet make_keys(std::size_t n, std::uint64_t seed) {
  KeySet k;
  k.size = n;
  k.public_keys.resize(n * kKeyLength);
  k.secrets.resize(n * kKeyLength);
  k.key_ids.reserve(n);
  Rng rng(seed);
  for (std::size_t i = 0; i < n; ++i) {
    fill_key(k.public_keys.data() + i * kKeyLength, "pk", rng);
    fill_key(k.secrets.data() + i * kKeyLength, "sk", rng);
    k.key_ids.push_back(random_uuid(rng));
  }
  return k;
}

apikeys::Uuid random_uuid(Rng& rng) {
  std::array<std::uint8_t, 16> b{};
  for (std::size_t i = 0; i < 16; i += 8) {
    const std::uint64_t v = rng.next();
    for (std::size_t j = 0; j < 8; ++j) b[i + j] = static_cast<std::uint8_t>(v >> (8 * j));
  }
  b[6] = static_cast<std::uint8_t>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<std::uint8_t>((b[8] & 0x3f) | 0x80);
  return apikeys::Uuid(b);
}

apikeys::Uuid account_of(std::size_t index) {
  const std::uint64_t account = index / kKeysPerAccount;
  std::array<std::uint8_t, 16> b{};
  b[0] = 0xbe;
  b[1] = 0x4c;
  b[6] = 0x40;
  b[8] = 0x80;
  for (std::size_t j = 0; j < 8; ++j)
    b[8 + j] |= static_cast<std::uint8_t>(account >> (8 * (7 - j)));
  return apikeys::Uuid(b);
}

std::string title_of(std::size_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "bench key %010llu",
                static_cast<unsigned long long>(index % 10000000000ULL));
  return buf;
}

apikeys::TimePoint created_at_of(std::size_t index) {
  return apikeys::from_unix_millis(kEpochMillis + static_cast<std::int64_t>(index));
}

std::vector<apikeys::Digest> digests_of(const KeySet& keys, const apikeys::Hasher& hasher) {
  std::vector<apikeys::Digest> out;
  out.reserve(keys.size);
  for (std::size_t i = 0; i < keys.size; ++i) out.push_back(hasher.hash(keys.secret(i)));
  return out;
}

apikeys::KeyRecord record_of(const KeySet& keys, std::size_t index, const apikeys::Digest& digest,
                             bool revoked) {
  apikeys::KeyRecord r;
  r.info.key_id = keys.key_ids[index];
  r.info.account_id = account_of(index);
  r.info.public_key.assign(keys.public_key(index));
  r.info.title = title_of(index);
  r.info.status = revoked ? apikeys::KeyStatus::revoked : apikeys::KeyStatus::active;
  r.info.created_at = created_at_of(index);
  r.digest = digest;
  return r;
}

namespace {

// bulk_load_sqlite() into `path`, a file of its own.
void load_sqlite_file(const std::string& path, const KeySet& keys, const apikeys::Hasher& hasher,
                      std::size_t revoked_from) {
  remove_database(path);
  { apikeys::SqliteStore schema(path); }  // the store's own schema and migrations

  Db d(path);
  d.exec("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -1048576;");
  // Rows first, indexes after: one sort per index instead of random B-tree inserts. The
  // table's triggers go too (they keep has_credits, which is 0 for these keys, as no
  // credits are loaded) and come back last.
  std::vector<std::string> index_sql;
  std::vector<std::string> trigger_sql;
  {
    Stmt q(d,
           "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger')"
           " AND tbl_name = 'api_keys' AND sql IS NOT NULL");
    std::vector<std::pair<std::string, std::string>> dropped;
    while (sqlite3_step(q.s) == SQLITE_ROW) {
      const std::string type = reinterpret_cast<const char*>(sqlite3_column_text(q.s, 0));
      dropped.emplace_back(type, reinterpret_cast<const char*>(sqlite3_column_text(q.s, 1)));
      (type == "index" ? index_sql : trigger_sql)
          .emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(q.s, 2)));
    }
    for (const auto& [type, name] : dropped) {
      d.exec(std::string(type == "index" ? "DROP INDEX" : "DROP TRIGGER") + " \"" + name + "\"");
    }
  }
  d.exec("BEGIN");
  {
    // The store's own column list and binding (src/sqlite/record_codec.hpp): a field
    // added to keys is loaded here with no change.
    Stmt ins(d, apikeys::detail::sqlite::insert_sql().c_str());
    for (std::size_t i = 0; i < keys.size; ++i) {
      const apikeys::KeyRecord record =
          record_of(keys, i, hasher.hash(keys.secret(i)), i >= revoked_from);
      const int rc = apikeys::detail::sqlite::bind_record(ins.s, record);
      if (rc != SQLITE_OK || sqlite3_step(ins.s) != SQLITE_DONE) {
        throw std::runtime_error(std::string("bulk insert: ") + sqlite3_errmsg(d.db));
      }
      sqlite3_reset(ins.s);
    }
  }
  for (const auto& sql : index_sql) d.exec(sql);
  for (const auto& sql : trigger_sql) d.exec(sql);
  d.exec("COMMIT");
  d.exec("PRAGMA journal_mode = WAL");
}

}  // namespace

void bulk_load_sqlite(const std::string& path, const KeySet& keys, const apikeys::Hasher& hasher,
                      std::size_t revoked_from) {
  // Built under another name and renamed into place when complete: a load cut short
  // (minutes at 10 million keys, with the journal off and the triggers dropped) never
  // leaves a file that sqlite_file_matches() would take for a finished one.
  const std::string building = path + ".building";
  remove_database(path);
  load_sqlite_file(building, keys, hasher, revoked_from);
  std::filesystem::rename(building, path);
  remove_database(building);  // a WAL or shared-memory file left by the last close
}

bool sqlite_file_matches(const std::string& path, const KeySet& keys) {
  if (!std::filesystem::exists(path) || keys.size == 0) return false;
  try {
    Db d(path);
    auto scalar = [&](const char* sql) -> std::int64_t {
      Stmt q(d, sql);
      return sqlite3_step(q.s) == SQLITE_ROW ? sqlite3_column_int64(q.s, 0) : -1;
    };
    if (scalar("PRAGMA user_version") != apikeys::SqliteStore::schema_version()) return false;
    if (scalar("SELECT count(*) FROM api_keys") != static_cast<std::int64_t>(keys.size))
      return false;
    Stmt q(d, "SELECT count(*) FROM api_keys WHERE public_key IN (?1, ?2)");
    const std::string_view first = keys.public_key(0);
    const std::string_view last = keys.public_key(keys.size - 1);
    sqlite3_bind_text(q.s, 1, first.data(), static_cast<int>(first.size()), SQLITE_STATIC);
    sqlite3_bind_text(q.s, 2, last.data(), static_cast<int>(last.size()), SQLITE_STATIC);
    return sqlite3_step(q.s) == SQLITE_ROW &&
           sqlite3_column_int64(q.s, 0) == (keys.size == 1 ? 1 : 2);
  } catch (const std::exception&) {
    return false;
  }
}

void checkpoint(const std::string& path) {
  try {
    Db d(path);
    sqlite3_exec(d.db, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
  } catch (const std::exception&) {
  }
}

void warm_page_cache(const std::string& path) {
  std::vector<char> buf(1 << 20);
  for (const char* suffix : {"", "-wal"}) {
    std::ifstream in(path + suffix, std::ios::binary);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    }
  }
}

std::size_t heap_bytes_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0;
  std::size_t resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

CpuSample cpu_sample() {
  CpuSample out;
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0) {
    out.process_s = static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
  // "cpu user nice system idle iowait irq softirq steal ...", in clock ticks.
  std::ifstream stat("/proc/stat");
  std::string cpu;
  stat >> cpu;
  if (cpu == "cpu") {
    std::uint64_t v[8] = {};
    for (auto& x : v) stat >> x;
    const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    const std::uint64_t idle = v[3] + v[4];
    std::uint64_t total = 0;
    for (auto x : v) total += x;
    out.machine_busy_s = static_cast<double>(total - idle) / tick;
    out.machine_total_s = static_cast<double>(total) / tick;
  }
  return out;
}

double median(std::vector<double> values) {
  if (values.empty()) return std::nan("");
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

double percentile_sorted(const std::vector<std::int64_t>& sorted, double q) {
  if (sorted.empty()) return std::nan("");
  const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)]);
}

}  // namespace apikeys_bench
