// A model of one rate limit for the tests and fuzzers: the continuous-state leaky
// bucket, in exact rational arithmetic. A limit of L per P is a bucket that drains one
// unit of time per unit of time, holds at most burst*T (T = P/L) and takes c*T for a
// request of cost c. It is the formulation GCRA (src/gcra.hpp, "virtual scheduling")
// is equivalent to: the bucket's content is how far GCRA's TAT is ahead of now.
// Exact while costs stay below 2^32 (products of 128 bits).
// Thread-safety: none (a plain value). Ownership: plain values.
#ifndef APIKEYS_TESTS_LEAKY_BUCKET_MODEL_HPP
#define APIKEYS_TESTS_LEAKY_BUCKET_MODEL_HPP

#include <cstdint>

#include "apikeys/types.hpp"

namespace apikeys_test {

// NOLINTNEXTLINE(modernize-use-using): __extension__ needs the typedef form.
__extension__ typedef __int128 Int128;

inline Int128 gcd(Int128 a, Int128 b) {
  if (a < 0) a = -a;
  while (b != 0) {
    const Int128 t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// An exact rational number n/d, d > 0, kept reduced.
struct Q {
  Int128 n = 0;
  Int128 d = 1;
  Q() = default;
  Q(Int128 num, Int128 den) : n(num), d(den) {
    const Int128 g = gcd(n, d);
    if (g > 1) {
      n /= g;
      d /= g;
    }
  }
  static Q whole(Int128 v) { return Q(v, 1); }
};
inline Q operator+(const Q& a, const Q& b) { return Q(a.n * b.d + b.n * a.d, a.d * b.d); }
inline Q operator-(const Q& a, const Q& b) { return Q(a.n * b.d - b.n * a.d, a.d * b.d); }
inline Q operator*(const Q& a, Int128 k) { return Q(a.n * k, a.d); }
inline bool operator<(const Q& a, const Q& b) { return a.n * b.d < b.n * a.d; }
inline Int128 ceil_q(const Q& a) {  // a >= 0
  return (a.n + a.d - 1) / a.d;
}
inline Int128 floor_q(const Q& a) {  // a >= 0
  return a.n / a.d;
}

// The continuous-state leaky bucket: content X (ns) at the last conforming time.
struct Bucket {
  Q content;
  std::int64_t last = 0;
  bool used = false;

  struct Result {
    bool admit = false;
    std::int64_t retry_after_ns = 0;
    std::uint64_t remaining = 0;
    std::int64_t reset_ns = 0;
  };

  Result decide(const apikeys::RateLimit& l, std::uint64_t cost, std::int64_t now) {
    const Q t(static_cast<Int128>(l.period.count()) * 1'000'000, l.limit);  // T in ns
    const Q capacity = t * static_cast<Int128>(l.effective_burst());
    Q drained = used ? content - Q::whole(static_cast<Int128>(now) - last) : Q();
    if (drained < Q()) drained = Q();
    const Q filled = drained + t * static_cast<Int128>(cost);
    Result r;
    if (cost != 0 && capacity < filled) {
      r.retry_after_ns = static_cast<std::int64_t>(ceil_q(filled - capacity));
      return r;
    }
    r.admit = true;
    const Q after = cost == 0 ? drained : filled;
    if (cost != 0) {
      content = after;
      last = now;
      used = true;
    }
    // The room left, in whole intervals T (none when a limit lowered since holds more).
    const Q room = capacity - after;
    r.remaining =
        room.n > 0 ? static_cast<std::uint64_t>(floor_q(Q(room.n * t.d, room.d * t.n))) : 0;
    r.reset_ns = static_cast<std::int64_t>(ceil_q(after));
    return r;
  }
};

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_LEAKY_BUCKET_MODEL_HPP
