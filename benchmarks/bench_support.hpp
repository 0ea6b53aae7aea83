// Support for apikeys_bench: deterministic key sets, SQLite files bulk-loaded in
// SqliteStore's schema (optionally cached between runs), allocator and RSS probes, and
// the small statistics the targets need.
// Thread-safety: KeySet is immutable once built (share it); Rng is one per thread.
// Ownership: TempDir removes its directory when it dies; everything else is a value.
#ifndef APIKEYS_BENCHMARKS_BENCH_SUPPORT_HPP
#define APIKEYS_BENCHMARKS_BENCH_SUPPORT_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/hasher.hpp"
#include "apikeys/types.hpp"
#include "temp_dir.hpp"

namespace apikeys_bench {

/// splitmix64: fast, deterministic, good enough to pick keys uniformly.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) noexcept : s_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n) by multiply-shift (no division on the measured path).
  std::uint32_t below(std::uint32_t n) noexcept {
    return static_cast<std::uint32_t>(
        (static_cast<std::uint64_t>(static_cast<std::uint32_t>(next())) * n) >> 32);
  }

 private:
  std::uint64_t s_;
};

/// "pk_" / "sk_" plus 32 base62 characters: the default KeyFormat.
inline constexpr std::size_t kKeyLength = 35;
/// Keys i*100 .. i*100+99 belong to account i (so `list` returns 100 keys).
inline constexpr std::size_t kKeysPerAccount = 100;
/// 32 bytes, the hasher's minimum; the HMAC floors use the same key.
inline constexpr std::string_view kPepper = "apikeys-benchmark-pepper-0123456";

/// n key pairs and key ids, generated from a seed (so a cached database file can be
/// matched again without storing secrets), held in two flat buffers.
struct KeySet {
  std::size_t size = 0;
  std::vector<char> public_keys;
  std::vector<char> secrets;
  std::vector<apikeys::Uuid> key_ids;

  [[nodiscard]] std::string_view public_key(std::size_t i) const noexcept {
    return {public_keys.data() + i * kKeyLength, kKeyLength};
  }
  [[nodiscard]] std::string_view secret(std::size_t i) const noexcept {
    return {secrets.data() + i * kKeyLength, kKeyLength};
  }
};

[[nodiscard]] KeySet make_keys(std::size_t n, std::uint64_t seed);
/// A random version-4 UUID from `rng`.
[[nodiscard]] apikeys::Uuid random_uuid(Rng& rng);
/// The account that owns key `index`.
[[nodiscard]] apikeys::Uuid account_of(std::size_t index);
/// A 20-character title, "bench key 0000000042".
[[nodiscard]] std::string title_of(std::size_t index);
/// created_at of key `index` (distinct milliseconds, so list order is defined).
[[nodiscard]] apikeys::TimePoint created_at_of(std::size_t index);

[[nodiscard]] std::vector<apikeys::Digest> digests_of(const KeySet& keys,
                                                      const apikeys::Hasher& hasher);
/// The record SqliteStore and MemoryStore hold for key `index`.
[[nodiscard]] apikeys::KeyRecord record_of(const KeySet& keys, std::size_t index,
                                           const apikeys::Digest& digest, bool revoked);

/// Makes `path` an apikeys database holding keys[0..n): schema by SqliteStore itself,
/// rows by one raw sqlite3 transaction (journal and sync off, indexes rebuilt after the
/// rows). Keys at index >= revoked_from are revoked. Replaces whatever was at `path`.
void bulk_load_sqlite(const std::string& path, const KeySet& keys, const apikeys::Hasher& hasher,
                      std::size_t revoked_from);
/// True when `path` is an apikeys database of the current schema holding exactly
/// `rows` keys whose first and last public keys are those of `keys`.
[[nodiscard]] bool sqlite_file_matches(const std::string& path, const KeySet& keys);
/// Runs PRAGMA wal_checkpoint(TRUNCATE) on its own connection; best effort.
void checkpoint(const std::string& path);
/// Reads the file (and its -wal) once so the OS page cache holds it.
void warm_page_cache(const std::string& path);

/// Bytes the allocator has handed out and not taken back (glibc mallinfo2: in-use
/// chunks of every arena plus mmapped chunks).
[[nodiscard]] std::size_t heap_bytes_in_use();
/// Resident set size of this process, in bytes.
[[nodiscard]] std::size_t rss_bytes();

/// CPU time used so far: by this process (all threads), and by the whole machine
/// (/proc/stat, every CPU, in seconds of busy and of total time).
struct CpuSample {
  double process_s = 0;
  double machine_busy_s = 0;
  double machine_total_s = 0;
};
[[nodiscard]] CpuSample cpu_sample();

[[nodiscard]] double median(std::vector<double> values);
/// q in [0, 1] of an ascending vector (nearest rank).
[[nodiscard]] double percentile_sorted(const std::vector<std::int64_t>& sorted, double q);

/// A fresh directory under the system temp dir, removed with its contents at the end:
/// the tests' TempDir (tests/support/temp_dir.hpp), named "apikeys-bench-XXXXXX".
class TempDir : public apikeys_test::TempDir {
 public:
  TempDir() : apikeys_test::TempDir("apikeys-bench") {}
};

}  // namespace apikeys_bench

#endif  // APIKEYS_BENCHMARKS_BENCH_SUPPORT_HPP
