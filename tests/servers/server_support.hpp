// Helpers for the `servers` suites: finding the PostgreSQL and Redis servers through
// APIKEYS_TEST_PG / APIKEYS_TEST_REDIS (skip, or fail under APIKEYS_REQUIRE_SERVERS=1),
// running the server control commands that scripts/servers.sh exports for fault
// tests, and unique names so tests sharing one server never see each other's data.
// Thread-safety: plain functions; unique_name() is safe from many threads.
// Ownership: nothing is held; callers own what they build from these values.
#ifndef APIKEYS_TESTS_SERVER_SUPPORT_HPP
#define APIKEYS_TESTS_SERVER_SUPPORT_HPP

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>

#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "catch.hpp"
#include "test_support.hpp"

namespace apikeys_test {

/// True when APIKEYS_REQUIRE_SERVERS=1: a missing server is then a failure, not a skip.
inline bool servers_required() {
  const char* v = std::getenv("APIKEYS_REQUIRE_SERVERS");
  return v != nullptr && std::string_view(v) == "1";
}

/// The value of `name`, or nullopt after a clear WARN (skip) or FAIL (when required).
/// `what` names the server for the message.
inline std::optional<std::string> server_env(const char* name, const char* what) {
  const char* v = std::getenv(name);
  if (v != nullptr && *v != '\0') return std::string(v);
  if (servers_required()) {
    FAIL(what << " is required (APIKEYS_REQUIRE_SERVERS=1) but " << name
              << " is not set; start one with: eval \"$(scripts/servers.sh start)\"");
  }
  WARN("SKIPPED: no " << what << " (" << name
                      << " is not set). Start one with: eval \"$(scripts/servers.sh start)\"");
  return std::nullopt;
}

/// libpq conninfo of the test PostgreSQL, or nullopt (skip/fail already reported).
inline std::optional<std::string> test_pg() {
  return server_env("APIKEYS_TEST_PG", "PostgreSQL server");
}

/// host and port of the test Redis.
struct RedisAddress {
  std::string host;
  int port = 0;
};

/// The test Redis from APIKEYS_TEST_REDIS ("host:port"), or nullopt (skip/fail reported).
inline std::optional<RedisAddress> test_redis() {
  const auto v = server_env("APIKEYS_TEST_REDIS", "Redis server");
  if (!v) return std::nullopt;
  const auto colon = v->rfind(':');
  if (colon == std::string::npos || colon == 0) {
    FAIL("APIKEYS_TEST_REDIS must be host:port, not '" << *v << "'");
    return std::nullopt;
  }
  RedisAddress a;
  a.host = v->substr(0, colon);
  a.port = std::atoi(v->c_str() + colon + 1);
  if (a.port < 1 || a.port > 65535) {
    FAIL("APIKEYS_TEST_REDIS has a bad port: '" << *v << "'");
    return std::nullopt;
  }
  return a;
}

/// Runs the server control command in environment variable `name` (exported by
/// scripts/servers.sh, e.g. APIKEYS_TEST_PG_RESTART). Returns false after a WARN (or
/// FAIL when servers are required) if it is not set; REQUIREs that the command works.
inline bool server_control(const char* name) {
  const auto cmd = server_env(name, "server control command");
  if (!cmd) return false;
  const std::string line = *cmd + " >/dev/null 2>&1";
  const int rc = std::system(line.c_str());
  INFO("server control: " << *cmd);
  REQUIRE(rc == 0);
  return true;
}

/// True when every control command named is set (so a fault test can run at all);
/// otherwise reports the skip (or failure) once and returns false.
inline bool have_controls(std::initializer_list<const char*> names) {
  for (const char* n : names) {
    const char* v = std::getenv(n);
    if (v == nullptr || *v == '\0') {
      (void)server_env(n, "server control command from scripts/servers.sh");
      return false;
    }
  }
  return true;
}

/// A name no other test (in this or another process) uses: letters, digits and
/// underscores, starting with `stem`, at most 40 characters.
inline std::string unique_name(std::string_view stem) {
  static std::atomic<std::uint32_t> counter{0};
  static const std::uint32_t salt = std::random_device{}();
  return std::string(stem) + "_" + std::to_string(::getpid()) + "_" +
         std::to_string(salt % 100000) + "_" + std::to_string(counter.fetch_add(1));
}

/// Polls `pred` every 10 ms until it is true or `limit` passes; returns its last value.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= end) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

/// The first piece of `secret` (`piece` bytes long) that occurs in `text`, or "" when
/// none does: a truncated or partly quoted credential is still a leak. Secrets shorter
/// than `piece` are looked for whole.
inline std::string leaked_piece(std::string_view text, std::string_view secret,
                                std::size_t piece = 4) {
  if (secret.size() <= piece) {
    return !secret.empty() && text.find(secret) != std::string_view::npos ? std::string(secret)
                                                                          : "";
  }
  for (std::size_t at = 0; at + piece <= secret.size(); ++at) {
    if (text.find(secret.substr(at, piece)) != std::string_view::npos)
      return std::string(secret.substr(at, piece));
  }
  return "";
}

// The hasher and a titled request every server test uses.
inline std::shared_ptr<apikeys::Hasher> hasher() {
  return std::make_shared<apikeys::HmacSha256Hasher>(kTestPepper);
}

inline apikeys::CreateRequest request(const std::string& title) {
  apikeys::CreateRequest r;
  r.title = title;
  return r;
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_SERVER_SUPPORT_HPP
