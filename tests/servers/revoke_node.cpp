// One "node" of the two-process revocation test: validates a key in a loop through its
// own PostgresStore and two-tier RedisCache, and reports when it first sees the key
// rejected.
//
//   apikeys_revoke_node --pg CONNINFO --schema NAME --redis HOST:PORT --prefix P
//                       [--poll-ms N] [--timeout-ms N] [--require SCOPE]...
//
// Each --require adds a scope the key must grant (Requirements::scopes): a key that no
// longer grants it is rejected (insufficient_scope).
// Reads "pk_...:sk_..." from the first line of stdin (a secret never goes on a command
// line). Prints "ready" once the key validates and the in-process tier is live (so
// later validations are answered without I/O), then, at the first rejection,
// "rejected CODE NANOS" where NANOS is steady_clock (CLOCK_MONOTONIC, shared by every
// process on the machine) at that moment. Exit 0 then; 1 on timeout or error.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/hasher.hpp"
#include "apikeys/postgres_store.hpp"
#include "apikeys/redis_cache.hpp"
#include "apikeys/validator.hpp"
#include "test_support.hpp"

namespace {

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string pg, schema, redis, prefix;
  long poll_ms = 0;
  long timeout_ms = 30'000;
  apikeys::Requirements requirements;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--pg")
      pg = value;
    else if (flag == "--schema")
      schema = value;
    else if (flag == "--redis")
      redis = value;
    else if (flag == "--prefix")
      prefix = value;
    else if (flag == "--poll-ms")
      poll_ms = std::atol(value.c_str());
    else if (flag == "--timeout-ms")
      timeout_ms = std::atol(value.c_str());
    else if (flag == "--require")
      requirements.scopes.push_back(value);
    else {
      std::cerr << "unknown option " << flag << '\n';
      return 2;
    }
  }
  const auto colon = redis.rfind(':');
  if (pg.empty() || schema.empty() || prefix.empty() || colon == std::string::npos) {
    std::cerr
        << "usage: apikeys_revoke_node --pg CONNINFO --schema NAME --redis HOST:PORT --prefix P\n";
    return 2;
  }
  std::string token;
  if (!std::getline(std::cin, token)) {
    std::cerr << "no token on stdin\n";
    return 2;
  }
  const auto sep = token.find(':');
  if (sep == std::string::npos) return 2;
  const std::string public_key = token.substr(0, sep);
  const std::string secret = token.substr(sep + 1);

  try {
    apikeys::PostgresStoreOptions so;
    so.schema = schema;
    auto store = std::make_shared<apikeys::PostgresStore>(pg, so);
    apikeys::RedisCacheOptions co;
    co.host = redis.substr(0, colon);
    co.port = std::atoi(redis.c_str() + colon + 1);
    co.prefix = prefix;
    auto cache = std::make_shared<apikeys::RedisCache>(co);
    apikeys::ValidatorOptions vo;
    vo.cache = cache;
    vo.revision_poll_interval = std::chrono::milliseconds(poll_ms);
    vo.record_last_use = false;
    apikeys::Validator validator(
        store, std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper), vo);

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    bool ready = false;
    while (std::chrono::steady_clock::now() < deadline) {
      const auto r = validator.validate(public_key, secret, requirements);
      if (!ready) {
        if (r.ok() && cache->local_tier_live()) {
          ready = true;
          std::cout << "ready" << std::endl;
        }
      } else if (!r.ok()) {
        const std::int64_t at = steady_ns();
        std::cout << "rejected " << apikeys::to_string(r.code) << ' ' << at << std::endl;
        return 0;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    std::cout << "timeout" << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "revoke_node: " << e.what() << '\n';
    return 1;
  }
}
