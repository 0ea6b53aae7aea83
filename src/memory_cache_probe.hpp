// Private: the Validator's own line to a MemoryCache. Through the Cache interface, each
// of a validation's calls (prefetch(), get_into(), then on a miss fill_token() and put())
// hashes the public key again to find its entry: a 128-bit SipHash, about 20 ns each.
// Here the key is hashed once, into a CacheTag, and each call takes the tag. And a
// lookup presents a CacheProof of the secret rather than its HMAC digest: a hit then
// computes no HMAC (doc/memory-cache.md, "Proofs").
// Thread-safety: as MemoryCache's own methods. Ownership: a tag is a plain value; it
// belongs to the cache that made it (another cache's tag finds nothing, or another
// entry, since each cache hashes under a key of its own).
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "apikeys/hasher.hpp"
#include "apikeys/memory_cache.hpp"
#include "siphash.hpp"

namespace apikeys::detail {

// What a MemoryCache keeps of the secret that earned a verdict, and what a lookup must
// present to be answered: a 128-bit SipHash-2-4 under a random key of the cache's own,
// which never leaves the process. Of the presented secret itself when the Validator
// calls (proof()), so that a hit needs no HMAC; of the presented digest when a caller of
// the Cache interface does. The two are under different keys: neither ever answers the
// other's lookups. The digests' key also makes the proof domains (domain()), whose
// input is never a digest's length.
struct CacheProof {
  Sip128 mac;
};

// True when a and b are the same proof; no branch or early exit on their bytes.
inline bool same_proof(const CacheProof& a, const CacheProof& b) noexcept {
  std::uint64_t diff = a.mac.lo ^ b.mac.lo;
#if defined(__GNUC__) || defined(__clang__)
  __asm__ __volatile__("" : "+r"(diff));  // opaque: no early exit on the first word
#endif
  diff |= a.mac.hi ^ b.mac.hi;
  return diff == 0;
}

// A public key's identity in one MemoryCache. `usable` is false for a key longer than
// MemoryCache::kMaxPublicKeyLength, which the cache never holds.
struct CacheTag {
  Sip128 id;
  bool usable = false;
};

class MemoryCacheProbe {
 public:
  [[nodiscard]] static CacheTag tag(const MemoryCache& cache, std::string_view public_key) noexcept;
  // The domain of a Validator's proofs, so that Validators sharing a cache answer each
  // other's verdicts only when their hashers would judge a secret alike. For an
  // HmacSha256Hasher (that type exactly), a fingerprint of what it can check: the
  // digest of a fixed text under each pepper it knows, in order of pepper id (which one
  // is current does not change whether a secret checks out). Any other hasher may accept
  // ids its pepper_ids() does not list, so it gets random_domain(): its Validator shares
  // nothing. Throws what the hasher throws (the caller reports it and takes a random
  // domain), and what random_domain() throws.
  [[nodiscard]] static Sip128 domain(const MemoryCache& cache, const Hasher& hasher);
  // A domain nobody else has: a hash under a key drawn for it from the CSPRNG. Throws
  // Error(crypto) if the CSPRNG fails.
  [[nodiscard]] static Sip128 random_domain();
  // The proof of a presented secret in `domain`. The SipHash state, a keyed function of
  // the secret's bytes, is a local value, not wiped (doc/memory-cache.md, "Proofs").
  [[nodiscard]] static CacheProof proof(const MemoryCache& cache, std::string_view secret,
                                        const Sip128& domain) noexcept;
  // The proof of a presented digest (MemoryCache's own get(), get_into() and put()).
  [[nodiscard]] static CacheProof proof(const MemoryCache& cache, const Digest& presented) noexcept;
  // MemoryCache::prefetch(), get_into(), fill_token() and put() for the key of `tag`,
  // with a proof in place of the presented digest.
  static void prefetch(const MemoryCache& cache, const CacheTag& tag) noexcept;
  static bool get_into(MemoryCache& cache, const CacheTag& tag, const CacheProof& proof,
                       Verdict& out);
  [[nodiscard]] static std::uint64_t fill_token(MemoryCache& cache, const CacheTag& tag);
  static void put(MemoryCache& cache, const CacheTag& tag, const CacheProof& proof,
                  const Verdict& verdict, std::chrono::milliseconds ttl, std::uint64_t token);
};

}  // namespace apikeys::detail
