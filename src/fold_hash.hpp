// Private: FoldHasher, a light keyed hash after wyhash's multiply-fold, for tables whose
// keys come from whoever sets a key's policy or from stored keys, never from the bytes
// of a request alone: a limit's name (MemoryLimiter), the public key of a key that
// validated (LastUseTracker). A dozen instructions for a short string, where SipHash-1-3
// takes about a hundred. Two strings whose hashes match share a table's place: by
// accident one pair in 2^64; choosing such a pair would take the seeds, which come from
// the CSPRNG.
// Thread-safety: immutable once built; one instance may hash from many threads at once.
// Ownership: a plain value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "siphash.hpp"

namespace apikeys::detail {

class FoldHasher {
 public:
  // Seeds drawn from `seeds` (a SipHasher under a random key) under `domain`, so two
  // tables seeded from one SipHasher still hash apart. Throws what SipHasher() throws.
  FoldHasher(const SipHasher& seeds, std::string_view domain)
      : s0_(seeds(with(domain, '0')) | 1), s1_(seeds(with(domain, '1')) | 1) {}
  // Fixed seeds, for tests that need the same placement in every run.
  FoldHasher(std::uint64_t s0, std::uint64_t s1) noexcept : s0_(s0 | 1), s1_(s1 | 1) {}

  std::uint64_t operator()(std::string_view data) const noexcept {
    const auto* p = reinterpret_cast<const std::uint8_t*>(data.data());
    const std::size_t n = data.size();
    std::uint64_t seed = s0_ ^ (static_cast<std::uint64_t>(n) * 0x9e3779b97f4a7c15ULL);
    std::uint64_t a = 0;
    std::uint64_t b = 0;
    if (n >= 8) {
      std::size_t i = 0;
      for (; i + 16 < n; i += 16) seed = fold_mul(load64(p + i) ^ s1_, load64(p + i + 8) ^ seed);
      a = load64(p + (n > 16 ? n - 16 : 0));
      b = load64(p + n - 8);
    } else if (n >= 4) {
      a = load32(p);
      b = load32(p + n - 4);
    } else if (n > 0) {
      a = (std::uint64_t{p[0]} << 16) | (std::uint64_t{p[n / 2]} << 8) | p[n - 1];
    }
    return fold_mul(s1_ ^ n, fold_mul(a ^ s1_, b ^ seed));
  }

  // The 128-bit product of a and b, folded to 64 bits: every input bit reaches the
  // middle bits of the result, whichever end of a or b it sits at.
  static std::uint64_t fold_mul(std::uint64_t a, std::uint64_t b) noexcept {
    // NOLINTNEXTLINE(modernize-use-using): __extension__ needs the typedef form.
    __extension__ typedef unsigned __int128 UInt128;
    const UInt128 p = static_cast<UInt128>(a) * b;
    return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
  }

 private:
  static std::uint64_t load64(const std::uint8_t* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static std::uint64_t load32(const std::uint8_t* p) noexcept {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static std::string with(std::string_view domain, char which) {
    std::string s(domain);
    s += ' ';
    s += which;
    return s;
  }

  std::uint64_t s0_;
  std::uint64_t s1_;
};

// A 64-bit hash of an id's 16 bytes (a key or lineage id), for tables placed by id: one
// multiply-fold of its two halves, so every byte reaches every part of the result that
// picks a place. Ids that are not random (a store of the caller's own numbering its
// keys, whose ids differ only in their last bytes) still spread: a 64-bit multiply
// carries bits upward only, and put all such ids in one place. Unkeyed: ids come from
// the store, not from requests.
inline std::uint64_t fold_id(const std::uint8_t* id16) noexcept {
  std::uint64_t hi;
  std::uint64_t lo;
  std::memcpy(&hi, id16, sizeof hi);
  std::memcpy(&lo, id16 + 8, sizeof lo);
  return FoldHasher::fold_mul(hi ^ 0x9e3779b97f4a7c15ULL, lo ^ 0xff51afd7ed558ccdULL);
}

}  // namespace apikeys::detail
