// Fail closed under storage faults: read-only database, a lock held by
// another connection past the busy timeout, a full disk, a corrupted file. Under each:
// validate never answers `valid` for anything it should not (wrong or unknown secrets,
// revoked keys) and answers `error` when it cannot read; create fails with an
// apikeys::Error of a clear code and leaves no row behind; nothing crashes; and once
// the fault is gone the same process carries on.
//
// Faults that need mount(2) (a read-only bind mount, a small tmpfs) run only where the
// test may mount (root outside a locked-down container); they warn that they skipped
// otherwise. What they add is also checked everywhere: the full disk with RLIMIT_FSIZE,
// which root obeys, and a read-only file system with the VFS below. A file system that turns
// read-only under an open store (what ext4 does on a disk error) is simulated by a SQLite VFS whose
// writes fail as writes to such a file system do: a remount cannot make it, as Linux refuses to
// remount read-only while files are open for writing.
#include <signal.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <csignal>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "reliability_support.hpp"
#include "test_support.hpp"

using namespace apikeys;
namespace fs = std::filesystem;

namespace {

struct Key {
  std::string pk;
  std::string sk;
  Uuid id;
  bool revoked = false;
};

std::shared_ptr<HmacSha256Hasher> hasher() {
  return std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
}

// No cache: every validation must reach the store, where the fault is.
KeyManagerOptions uncached() {
  KeyManagerOptions o;
  o.validation.record_last_use = false;
  return o;
}

CreateRequest request(const std::string& title, std::size_t description_bytes = 0) {
  return CreateRequest{title, std::string(description_bytes, 'd'), std::nullopt};
}

// Creates `n` keys (every 5th revoked) in a fresh database at `path` and closes it.
std::vector<Key> populate(const std::string& path, int n, std::size_t description_bytes = 0,
                          SqliteStoreOptions so = {}) {
  std::vector<Key> keys;
  auto store = std::make_shared<SqliteStore>(path, so);
  KeyManager m(store, hasher(), uncached());
  for (int i = 0; i < n; ++i) {
    auto c = m.create(apikeys_test::account_id(1),
                      request("key " + std::to_string(i), description_bytes));
    Key k{c.info.public_key, std::string(c.secret_key.reveal()), c.info.key_id, false};
    if (i % 5 == 4) {
      m.revoke(apikeys_test::account_id(1), k.id);
      k.revoked = true;
    }
    keys.push_back(k);
  }
  return keys;
}

std::string wrong(const std::string& sk) {
  std::string w = sk;
  w.back() = w.back() == 'x' ? 'y' : 'x';
  return w;
}

std::string unknown_pk() {
  std::string pk = "pk_";
  append_random_base62(pk, 32);
  return pk;
}

struct Tally {
  int valid = 0;
  int error = 0;
  int other = 0;
  int violations = 0;
};

// Validates every key with its secret and a wrong one, plus unknown keys. A violation is
// `valid` for a revoked key, a wrong secret or an unknown key, or (when `readable`)
// anything but the right verdict.
Tally sweep(KeyManager& m, const std::vector<Key>& keys, bool readable) {
  Tally t;
  for (const Key& k : keys) {
    const auto r = m.validate(k.pk, k.sk);
    if (r.ok()) ++t.valid;
    if (r.code == ValidationCode::error) ++t.error;
    if (k.revoked && r.ok()) ++t.violations;
    if (r.ok() && r.key_id != k.id) ++t.violations;
    if (readable && r.code != (k.revoked ? ValidationCode::revoked : ValidationCode::valid))
      ++t.violations;
    const auto w = m.validate(k.pk, wrong(k.sk));
    if (w.ok()) ++t.violations;
    // Secret first: a wrong secret learns nothing of the key's state.
    if (readable && w.code != ValidationCode::wrong_secret) ++t.violations;
    const auto tok = m.validate(k.pk + ":" + wrong(k.sk));
    if (tok.ok()) ++t.violations;
  }
  for (int i = 0; i < 20; ++i) {
    const auto r = m.validate(unknown_pk(), keys.front().sk);
    if (r.ok()) ++t.violations;
    if (readable && r.code != ValidationCode::not_found) ++t.violations;
  }
  return t;
}

std::size_t row_count(const std::string& path) {
  apikeys_test::RawDb raw(path, SQLITE_OPEN_READONLY);
  return std::stoul(raw.scalar("SELECT count(*) FROM api_keys"));
}

// create() must fail with an apikeys::Error whose code is one of `codes`.
template <typename F>
bool fails_with(F&& f, std::initializer_list<ErrorCode> codes, std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message != nullptr) *message = e.what();
    return std::find(codes.begin(), codes.end(), e.code()) != codes.end();
  } catch (...) {
    return false;  // anything but apikeys::Error breaks the error model
  }
  return false;
}

// A mount(2) undone on scope exit; `ok` is false when mounting is not permitted.
class Mount {
 public:
  Mount(const char* source, const std::string& target, const char* type, unsigned long flags,
        const char* data)
      : target_(target) {
    ok_ = ::mount(source, target.c_str(), type, flags, data) == 0;
  }
  ~Mount() {
    if (ok_) ::umount2(target_.c_str(), MNT_DETACH);
  }
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;
  [[nodiscard]] bool ok() const noexcept { return ok_; }
  bool remount(unsigned long flags, const char* data) {
    return ::mount(nullptr, target_.c_str(), nullptr, MS_REMOUNT | flags, data) == 0;
  }

 private:
  std::string target_;
  bool ok_ = false;
};

// Says, as a warning Catch reports, that a test could not mount and skips the rest.
void warn_mount_skipped(const char* what) {
  WARN("faults: " << what << " skipped: mount not permitted here (" << std::strerror(errno) << ")");
}

// The default SQLite VFS, wrapped so that while `read_only` is set its files fail as
// those of a file system remounted read-only under them: every write, truncation and
// sync fails (EROFS: SQLite's SQLITE_IOERR_*), a file opened for writing is opened
// read-only, as the unix VFS falls back to, and a new file cannot be made. Reads and the
// locks and shared memory of files already open go on. Registered as the default VFS
// while alive, so a SqliteStore opened meanwhile uses it.
class ReadOnlyFsVfs {
 public:
  static inline std::atomic<bool> read_only{false};

  ReadOnlyFsVfs() {
    base_ = sqlite3_vfs_find(nullptr);
    vfs_ = *base_;
    vfs_.szOsFile = static_cast<int>(sizeof(File)) + base_->szOsFile;
    vfs_.zName = "apikeys-test-read-only-fs";
    vfs_.pAppData = base_;
    vfs_.xOpen = &open;
    vfs_.xDelete = [](sqlite3_vfs* v, const char* name, int sync) {
      if (read_only) return SQLITE_IOERR_DELETE;
      return base(v)->xDelete(base(v), name, sync);
    };
    ok_ = sqlite3_vfs_register(&vfs_, 1) == SQLITE_OK;
  }
  ~ReadOnlyFsVfs() {
    read_only = false;
    if (ok_) {
      sqlite3_vfs_unregister(&vfs_);
      sqlite3_vfs_register(base_, 1);
    }
  }
  ReadOnlyFsVfs(const ReadOnlyFsVfs&) = delete;
  ReadOnlyFsVfs& operator=(const ReadOnlyFsVfs&) = delete;
  [[nodiscard]] bool ok() const noexcept { return ok_; }

 private:
  struct File {
    sqlite3_file base;    // pMethods: kMethods
    sqlite3_file* inner;  // the base VFS's file, right after this struct
  };
  static sqlite3_vfs* base(sqlite3_vfs* v) { return static_cast<sqlite3_vfs*>(v->pAppData); }
  static sqlite3_file* in(sqlite3_file* f) { return reinterpret_cast<File*>(f)->inner; }

  static int open(sqlite3_vfs* v, sqlite3_filename name, sqlite3_file* f, int flags, int* out) {
    File* file = reinterpret_cast<File*>(f);
    file->inner = reinterpret_cast<sqlite3_file*>(file + 1);
    file->base.pMethods = nullptr;
    // The database, its journal and its WAL: temporary files live elsewhere (/tmp).
    constexpr int kOnDisk = SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL;
    if (read_only && (flags & SQLITE_OPEN_READWRITE) != 0 && (flags & kOnDisk) != 0) {
      std::error_code ec;  // never thrown through SQLite's C frames
      if ((flags & SQLITE_OPEN_CREATE) != 0 && name != nullptr && !fs::exists(name, ec)) {
        return SQLITE_CANTOPEN;  // nothing new is made on a read-only file system
      }
      flags = (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_READONLY;
    }
    const int rc = base(v)->xOpen(base(v), name, file->inner, flags, out);
    // A file the base VFS left open (pMethods set, even on failure) is closed through ours.
    if (file->inner->pMethods != nullptr) file->base.pMethods = &kMethods;
    return rc;
  }

  static const sqlite3_io_methods kMethods;

  sqlite3_vfs* base_ = nullptr;
  sqlite3_vfs vfs_{};
  bool ok_ = false;
};

const sqlite3_io_methods ReadOnlyFsVfs::kMethods = {
    3,
    [](sqlite3_file* f) {
      const int rc = in(f)->pMethods->xClose(in(f));
      f->pMethods = nullptr;
      return rc;
    },
    [](sqlite3_file* f, void* b, int n, sqlite3_int64 o) {
      return in(f)->pMethods->xRead(in(f), b, n, o);
    },
    [](sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
      if (read_only) return SQLITE_IOERR_WRITE;
      return in(f)->pMethods->xWrite(in(f), b, n, o);
    },
    [](sqlite3_file* f, sqlite3_int64 size) {
      if (read_only) return SQLITE_IOERR_TRUNCATE;
      return in(f)->pMethods->xTruncate(in(f), size);
    },
    [](sqlite3_file* f, int flags) {
      if (read_only) return SQLITE_IOERR_FSYNC;
      return in(f)->pMethods->xSync(in(f), flags);
    },
    [](sqlite3_file* f, sqlite3_int64* size) { return in(f)->pMethods->xFileSize(in(f), size); },
    [](sqlite3_file* f, int lock) { return in(f)->pMethods->xLock(in(f), lock); },
    [](sqlite3_file* f, int lock) { return in(f)->pMethods->xUnlock(in(f), lock); },
    [](sqlite3_file* f, int* out) { return in(f)->pMethods->xCheckReservedLock(in(f), out); },
    [](sqlite3_file* f, int op, void* arg) {
      return in(f)->pMethods->xFileControl(in(f), op, arg);
    },
    [](sqlite3_file* f) { return in(f)->pMethods->xSectorSize(in(f)); },
    [](sqlite3_file* f) { return in(f)->pMethods->xDeviceCharacteristics(in(f)); },
    [](sqlite3_file* f, int region, int size, int extend, void volatile** p) {
      return in(f)->pMethods->xShmMap(in(f), region, size, extend, p);
    },
    [](sqlite3_file* f, int offset, int n, int flags) {
      return in(f)->pMethods->xShmLock(in(f), offset, n, flags);
    },
    [](sqlite3_file* f) { in(f)->pMethods->xShmBarrier(in(f)); },
    [](sqlite3_file* f, int del) { return in(f)->pMethods->xShmUnmap(in(f), del); },
    [](sqlite3_file* f, sqlite3_int64 o, int n, void** p) {
      return in(f)->pMethods->xFetch(in(f), o, n, p);
    },
    [](sqlite3_file* f, sqlite3_int64 o, void* p) {
      return in(f)->pMethods->xUnfetch(in(f), o, p);
    },
};

// Lowers RLIMIT_FSIZE (ignoring SIGXFSZ, so a write past it fails with EFBIG instead of
// killing the process) and restores both on scope exit.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit l = saved_;
    l.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &l) == 0;
  }
  ~FileSizeLimit() { lift(); }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  void lift() {
    if (lifted_) return;
    lifted_ = true;
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, old_handler_);
  }
  [[nodiscard]] bool ok() const noexcept { return ok_; }

 private:
  rlimit saved_{};
  void (*old_handler_)(int) = SIG_DFL;
  bool ok_ = false;
  bool lifted_ = false;
};

// Creates keys until one fails (at most `limit` tries); returns how many succeeded and
// the error of the failure (nullopt if none failed).
struct FillResult {
  int created = 0;
  std::optional<ErrorCode> code;
  std::string message;
};
FillResult create_until_failure(KeyManager& m, int limit, std::vector<Key>& keys) {
  FillResult r;
  for (int i = 0; i < limit; ++i) {
    try {
      auto c = m.create(apikeys_test::account_id(1), request("fill " + std::to_string(i), 1000));
      keys.push_back(
          Key{c.info.public_key, std::string(c.secret_key.reveal()), c.info.key_id, false});
      ++r.created;
    } catch (const Error& e) {
      r.code = e.code();
      r.message = e.what();
      return r;
    }
  }
  return r;
}

}  // namespace

TEST_CASE("faults: a read-only database validates, refuses writes and leaves no row", "[faults]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("ro.db");
  std::vector<Key> keys = populate(db, 20);

  {
    SqliteStoreOptions so;
    so.read_only = true;
    auto store = std::make_shared<SqliteStore>(db, so);
    KeyManager m(store, hasher(), uncached());
    const Tally t = sweep(m, keys, /*readable=*/true);
    CHECK(t.violations == 0);
    std::string msg;
    CHECK(fails_with([&] { (void)m.create(apikeys_test::account_id(1), request("nope")); },
                     {ErrorCode::storage}, &msg));
    CHECK(msg.find("read-only") != std::string::npos);
    CHECK(fails_with([&] { m.revoke(apikeys_test::account_id(1), keys[0].id); },
                     {ErrorCode::storage}));
    CHECK(fails_with([&] { m.remove(apikeys_test::account_id(1), keys[1].id); },
                     {ErrorCode::storage}));
    CHECK(m.validate(keys[0].pk, keys[0].sk).ok());  // the failed revoke changed nothing
    CHECK(m.list(apikeys_test::account_id(1)).size() == keys.size());
  }
  CHECK(row_count(db) == keys.size());
  {
    // Fault gone: the same file opened read-write takes writes again.
    auto store = std::make_shared<SqliteStore>(db);
    KeyManager m(store, hasher(), uncached());
    auto c = m.create(apikeys_test::account_id(1), request("after"));
    CHECK(m.validate(c.info.public_key, c.secret_key.reveal()).ok());
  }
  CHECK(row_count(db) == keys.size() + 1);
}

TEST_CASE("faults: the file system turns read-only under an open store", "[faults]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("k.db");
  std::vector<Key> keys = populate(db, 10);
  ReadOnlyFsVfs vfs;
  REQUIRE(vfs.ok());
  auto store = std::make_shared<SqliteStore>(db);
  KeyManager m(store, hasher(), uncached());
  REQUIRE(sweep(m, keys, true).violations == 0);

  ReadOnlyFsVfs::read_only = true;
  const Tally t = sweep(m, keys, /*readable=*/true);  // reads go on
  CHECK(t.violations == 0);
  std::string msg;
  CHECK(fails_with([&] { (void)m.create(apikeys_test::account_id(1), request("nope")); },
                   {ErrorCode::storage, ErrorCode::busy}, &msg));
  std::cout << "faults: create on a read-only file system: " << msg << "\n";
  CHECK(fails_with([&] { m.revoke(apikeys_test::account_id(1), keys[0].id); },
                   {ErrorCode::storage, ErrorCode::busy}));
  CHECK(m.validate(keys[0].pk, keys[0].sk).ok());  // the failed revoke changed nothing
  CHECK(sweep(m, keys, true).violations == 0);

  ReadOnlyFsVfs::read_only = false;
  // Fault gone: the same store instance writes again.
  auto c = m.create(apikeys_test::account_id(1), request("after"));
  CHECK(m.validate(c.info.public_key, c.secret_key.reveal()).ok());
  m.revoke(apikeys_test::account_id(1), keys[0].id);
  keys[0].revoked = true;
  CHECK(sweep(m, keys, true).violations == 0);
  CHECK(row_count(db) == keys.size() + 1);
}

TEST_CASE("faults: a database on a read-only mount is refused with an error (bind mount)",
          "[faults]") {
  apikeys_test::TempDir dir;
  fs::create_directory(dir.path() / "src");
  fs::create_directory(dir.path() / "mnt");
  Mount bind((dir.path() / "src").c_str(), (dir.path() / "mnt").string(), nullptr, MS_BIND,
             nullptr);
  if (!bind.ok()) {
    warn_mount_skipped("read-only mount");
    return;
  }
  const std::string db = (dir.path() / "mnt" / "k.db").string();
  std::vector<Key> keys = populate(db, 10);  // closed again: nothing open for writing
  if (!bind.remount(MS_BIND | MS_RDONLY, nullptr)) {
    warn_mount_skipped("read-only remount");
    return;
  }
  // WAL needs a writable -shm: the store cannot be used, and says so with an Error.
  std::string msg;
  CHECK(fails_with([&] { SqliteStore other(db); }, {ErrorCode::storage, ErrorCode::busy}, &msg));
  std::cout << "faults: opening on a read-only mount: " << msg << "\n";

  REQUIRE(bind.remount(MS_BIND, nullptr));
  // Fault gone: the file opens and takes writes again, unchanged.
  auto store = std::make_shared<SqliteStore>(db);
  KeyManager m(store, hasher(), uncached());
  CHECK(sweep(m, keys, true).violations == 0);
  auto c = m.create(apikeys_test::account_id(1), request("after"));
  CHECK(m.validate(c.info.public_key, c.secret_key.reveal()).ok());
  CHECK(row_count(db) == keys.size() + 1);
}

TEST_CASE("faults: the database is locked by another connection past the busy timeout",
          "[faults]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("locked.db");
  std::vector<Key> keys = populate(db, 10);
  SqliteStoreOptions so;
  so.busy_timeout = std::chrono::milliseconds(100);
  auto store = std::make_shared<SqliteStore>(db, so);
  KeyManager m(store, hasher(), uncached());

  {
    apikeys_test::RawDb locker(db);
    locker.exec("BEGIN IMMEDIATE");  // holds the write lock
    locker.exec("UPDATE apikeys_meta SET revision = revision WHERE id = 1");
    std::string msg;
    CHECK(fails_with([&] { (void)m.create(apikeys_test::account_id(1), request("blocked")); },
                     {ErrorCode::busy}, &msg));
    std::cout << "faults: create while locked: " << msg << "\n";
    CHECK(
        fails_with([&] { m.revoke(apikeys_test::account_id(1), keys[0].id); }, {ErrorCode::busy}));
    CHECK(
        fails_with([&] { m.remove(apikeys_test::account_id(1), keys[1].id); }, {ErrorCode::busy}));
    // WAL: readers are not blocked by a writer, so validation goes on, correctly.
    CHECK(sweep(m, keys, /*readable=*/true).violations == 0);
    locker.exec("ROLLBACK");
  }
  CHECK(row_count(db) == keys.size());  // the refused create left nothing
  // Fault gone: the same store writes again.
  auto c = m.create(apikeys_test::account_id(1), request("after"));
  CHECK(m.validate(c.info.public_key, c.secret_key.reveal()).ok());
  m.revoke(apikeys_test::account_id(1), keys[0].id);
  keys[0].revoked = true;
  CHECK(sweep(m, keys, true).violations == 0);
}

TEST_CASE("faults: an exclusive lock held when the store opens", "[faults]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("excl.db");
  std::vector<Key> keys = populate(db, 5);
  SqliteStoreOptions so;
  so.busy_timeout = std::chrono::milliseconds(100);
  {
    apikeys_test::RawDb locker(db);
    locker.exec("PRAGMA locking_mode = EXCLUSIVE");
    locker.exec("BEGIN EXCLUSIVE");
    locker.exec("UPDATE apikeys_meta SET revision = revision WHERE id = 1");
    std::string msg;
    CHECK(fails_with([&] { SqliteStore s(db, so); }, {ErrorCode::busy, ErrorCode::storage}, &msg));
    std::cout << "faults: open while exclusively locked: " << msg << "\n";
    locker.exec("COMMIT");
  }
  auto store = std::make_shared<SqliteStore>(db, so);
  KeyManager m(store, hasher(), uncached());
  CHECK(sweep(m, keys, true).violations == 0);
}

TEST_CASE("faults: a full disk (RLIMIT_FSIZE) fails creates cleanly, then recovers", "[faults]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("full.db");
  std::vector<Key> keys = populate(db, 10);
  const std::size_t before = row_count(db);
  auto store = std::make_shared<SqliteStore>(db);
  KeyManager m(store, hasher(), uncached());

  FillResult fill;
  {
    std::error_code ec;
    const auto db_size = fs::file_size(db, ec);
    const auto wal_size = fs::file_size(db + "-wal", ec);
    FileSizeLimit limit(std::max<std::uintmax_t>(db_size, ec ? 0 : wal_size) + 48 * 1024);
    REQUIRE(limit.ok());
    fill = create_until_failure(m, 2000, keys);
    REQUIRE(fill.code.has_value());
    std::cout << "faults: disk full (RLIMIT_FSIZE) after " << fill.created
              << " creates: " << to_string(*fill.code) << ": " << fill.message << "\n";
    CHECK(*fill.code == ErrorCode::storage);
    // Reads still work, and nothing is valid that should not be.
    CHECK(sweep(m, keys, /*readable=*/false).violations == 0);
    CHECK(fails_with(
        [&] { (void)m.create(apikeys_test::account_id(1), request("still full", 1000)); },
        {ErrorCode::storage}));
    limit.lift();
  }
  CHECK(row_count(db) == before + static_cast<std::size_t>(fill.created));  // no partial row
  CHECK(apikeys_test::integrity_check(db) == "ok");
  // Space is back: the same store writes again and every key answers right.
  auto c = m.create(apikeys_test::account_id(1), request("after"));
  keys.push_back(Key{c.info.public_key, std::string(c.secret_key.reveal()), c.info.key_id, false});
  CHECK(sweep(m, keys, /*readable=*/true).violations == 0);
  CHECK(row_count(db) == before + static_cast<std::size_t>(fill.created) + 1);
}

TEST_CASE("faults: a full disk (small tmpfs) fails creates cleanly, then recovers", "[faults]") {
  apikeys_test::TempDir dir;
  const std::string mnt = dir.file("tmpfs");
  fs::create_directory(mnt);
  // Room for the schema and five keys with their audit events (each create writes some
  // 30 KiB of WAL pages), and a few creates more.
  Mount tmpfs("tmpfs", mnt, "tmpfs", 0, "size=512k");
  if (!tmpfs.ok()) {
    warn_mount_skipped("tmpfs disk full");
    return;
  }
  const std::string db = mnt + "/full.db";
  std::vector<Key> keys = populate(db, 5);
  const std::size_t before = row_count(db);
  FillResult fill;
  {
    auto store = std::make_shared<SqliteStore>(db);
    KeyManager m(store, hasher(), uncached());
    fill = create_until_failure(m, 5000, keys);
    REQUIRE(fill.code.has_value());
    std::cout << "faults: disk full (tmpfs 512k) after " << fill.created
              << " creates: " << to_string(*fill.code) << ": " << fill.message << "\n";
    CHECK(*fill.code == ErrorCode::storage);
    CHECK(sweep(m, keys, /*readable=*/false).violations == 0);
    CHECK(row_count(db) == before + static_cast<std::size_t>(fill.created));
    REQUIRE(tmpfs.remount(0, "size=8m"));
    auto c = m.create(apikeys_test::account_id(1), request("after"));
    keys.push_back(
        Key{c.info.public_key, std::string(c.secret_key.reveal()), c.info.key_id, false});
    CHECK(sweep(m, keys, /*readable=*/true).violations == 0);
  }
  CHECK(apikeys_test::integrity_check(db) == "ok");
  CHECK(row_count(db) == before + static_cast<std::size_t>(fill.created) + 1);
}

TEST_CASE("faults: a corrupted database file answers error, never valid, and never crashes",
          "[faults]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("corrupt.db");
  const std::string backup = dir.file("backup.db");
  SqliteStoreOptions fast;
  fast.durable = false;
  // ~400 rows with 300-byte descriptions: a few dozen pages, so "the middle" is data.
  const std::vector<Key> keys = populate(db, 400, 300, fast);
  REQUIRE(!fs::exists(db + "-wal"));  // closed cleanly: everything is in the main file
  fs::copy_file(db, backup);
  const auto size = fs::file_size(db);
  REQUIRE(size > 16 * 4096);

  struct Damage {
    const char* name;
    std::uintmax_t offset;
    std::size_t length;
    int fill;  // byte value, or -1 for seeded random bytes, -2 to truncate at offset
  };
  const std::uintmax_t page = 4096;
  const std::uintmax_t mid = (size / 2) / page * page;
  const Damage damages[] = {
      {"zeroed pages in the middle", mid, 3 * page, 0x00},
      {"0xFF pages in the middle", mid - 4 * page, 2 * page, 0xFF},
      {"random bytes across a page boundary", mid + page / 2, page, -1},
      {"the header page zeroed after the header", 100, page - 100, 0x00},
      {"the file truncated to half", mid, 0, -2},
      {"the file truncated to the header", 100, 0, -2},
  };
  std::mt19937 rng(12345);
  int total_errors = 0;
  for (const Damage& d : damages) {
    std::error_code ec;  // a WAL left by the previous round must not replay onto this one
    fs::remove(db + "-wal", ec);
    fs::remove(db + "-shm", ec);
    fs::copy_file(backup, db, fs::copy_options::overwrite_existing);
    if (d.fill == -2) {
      fs::resize_file(db, d.offset);
    } else {
      std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
      REQUIRE(f);
      f.seekp(static_cast<std::streamoff>(d.offset));
      std::string bytes(d.length, static_cast<char>(d.fill));
      if (d.fill == -1) {
        for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
      }
      f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }

    std::string outcome;
    try {
      auto store = std::make_shared<SqliteStore>(db);
      KeyManager m(store, hasher(), uncached());
      const Tally t = sweep(m, keys, /*readable=*/false);
      total_errors += t.error;
      CHECK(t.violations == 0);
      bool create_ok = true;
      std::string msg;
      try {
        auto c = m.create(apikeys_test::account_id(1), request("on a corrupt file"));
        // If the write went through, the key it reported must be usable.
        const auto r = m.validate(c.info.public_key, c.secret_key.reveal());
        CHECK((r.ok() || r.code == ValidationCode::error));
      } catch (const Error& e) {
        create_ok = false;
        msg = e.what();
        CHECK((e.code() == ErrorCode::storage || e.code() == ErrorCode::busy));
      }
      bool list_ok = true;
      try {
        (void)m.list(apikeys_test::account_id(1));
      } catch (const Error& e) {
        list_ok = false;
        CHECK(e.code() == ErrorCode::storage);
      }
      outcome = "opened; " + std::to_string(t.valid) + " valid, " + std::to_string(t.error) +
                " error of " + std::to_string(keys.size()) + "; create " +
                (create_ok ? "ok" : "failed: " + msg) + "; list " + (list_ok ? "ok" : "failed");
    } catch (const Error& e) {
      // Refusing to open a damaged file is a fine answer, if it is a clear one.
      CHECK(e.code() == ErrorCode::storage);
      outcome = std::string("open refused: ") + e.what();
      ++total_errors;
    }
    std::cout << "faults: corrupt (" << d.name << "): " << outcome << "\n";
  }
  CHECK(total_errors > 0);  // the damage was noticed somewhere, as `error` or a refusal

  // Fault gone (the file restored): a new store in this process answers everything right.
  fs::copy_file(backup, db, fs::copy_options::overwrite_existing);
  std::error_code ec;
  fs::remove(db + "-wal", ec);
  fs::remove(db + "-shm", ec);
  auto store = std::make_shared<SqliteStore>(db);
  KeyManager m(store, hasher(), uncached());
  CHECK(sweep(m, keys, /*readable=*/true).violations == 0);
  CHECK(apikeys_test::integrity_check(db) == "ok");
}
