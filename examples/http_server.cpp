// An HTTP service whose routes are guarded by apikeys, using cpp-httplib.
//
// The middleware, require_api_key(), reads the key from `X-API-Key: pk_...:sk_...` or
// `Authorization: Bearer pk_...:sk_...`, validates it with the scopes the route needs,
// and either calls the route with the key's account id, or answers 401 with a JSON
// error (every invalid key alike: unknown, wrong secret, expired, revoked, disabled), or
// 403 when the key is valid but lacks a scope (RFC 6750: WWW-Authenticate: Bearer
// error="insufficient_scope", scope="..."). Keys with rate limits or credits are admitted
// by the Validator too (see admission_headers() and the answers below it):
//   - 429 Too Many Requests when a rate limit refuses, with Retry-After (seconds, rounded
//     up) and the IETF httpapi RateLimit-Policy / RateLimit fields of the limit that refused;
//   - 402 Payment Required when the key's credits are used up. The key is fine, its
//     balance is not: waiting does not help until the next refill or a top-up, so the
//     answer carries no Retry-After (which would invite clients to back off and retry,
//     as for 429) and says to top up instead;
//   - on success, RateLimit-Policy and RateLimit for every limit of the key.
// GET /metrics serves the validator's counters and latency histograms (apikeys::Stats,
// attached as an observer) in the Prometheus text format, for a Prometheus server to
// scrape; it needs no key here, so bind it where only the scraper reaches (this example
// listens on loopback only). Keys live in memory here; in a real service use SqliteStore
// or PostgresStore and manage keys with the `apikeys` CLI.
//
//   example_http_server [--port N]      (default: any free port; loopback only)
//
// It creates a demo account with an active key (no scopes), a reader key (scope
// invoices:read), a revoked key, a disabled key, a key limited to one request a minute
// with bursts of two ("per-minute=1/1m:2") and a key with one credit, and prints them (a real
// service never prints secrets), then "listening http://127.0.0.1:PORT". Try:
//   curl -H 'X-API-Key: <valid key>' http://127.0.0.1:PORT/whoami
//   curl -H 'X-API-Key: <reader key>' http://127.0.0.1:PORT/invoices   (needs invoices:read)
//   curl -i -H 'X-API-Key: <limited key>' http://127.0.0.1:PORT/whoami  (thrice: 200, 200, 429)
//   curl http://127.0.0.1:PORT/metrics
// SIGINT or SIGTERM stops it cleanly (exit status 0).
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <httplib.h>

#include "apikeys/apikeys.hpp"

namespace {

// A route that runs only for a valid key, and learns whose key it was.
using AuthedHandler = std::function<void(const httplib::Request&, httplib::Response&,
                                         const apikeys::Uuid& account_id)>;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool starts_with_ignore_case(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return false;
    }
  }
  return true;
}

enum class Presented { none, unusable, token };

// Finds the presented "pk_...:sk_..." token, as a view into the request's own header
// (no copy of the secret to free unwiped). Two keys in one request (both headers, or a
// header twice) are refused rather than guessed between.
Presented presented_token(const httplib::Request& req, std::string_view& token) {
  const std::size_t api_keys = req.headers.count("X-API-Key");
  const std::size_t authorizations = req.headers.count("Authorization");
  if (api_keys + authorizations == 0) return Presented::none;
  if (api_keys + authorizations > 1) return Presented::unusable;
  if (api_keys == 1) {
    token = trim(req.headers.find("X-API-Key")->second);
    return Presented::token;
  }
  const std::string_view value = trim(req.headers.find("Authorization")->second);
  if (!starts_with_ignore_case(value, "Bearer ")) return Presented::unusable;  // another scheme
  token = trim(value.substr(7));
  return Presented::token;
}

void unauthorized(httplib::Response& res, std::string_view error, std::string_view message) {
  res.status = 401;
  res.set_header("WWW-Authenticate", "Bearer realm=\"apikeys example\"");
  res.set_header("Cache-Control", "no-store");
  // error and message are fixed strings of this file: nothing to escape.
  res.set_content("{\"error\":\"" + std::string(error) + "\",\"message\":\"" +
                      std::string(message) + "\"}\n",
                  "application/json");
}

// Scopes are [a-z0-9_-] segments joined by '.' or ':' (README.md, "Key policy"): nothing
// in them needs escaping in a JSON string or a quoted header value.
std::string json_string_array(const std::vector<std::string>& items) {
  std::string out = "[";
  for (const std::string& s : items) out += (out.size() > 1 ? ",\"" : "\"") + s + "\"";
  return out + "]";
}

std::string join(const std::vector<std::string>& items, char separator) {
  std::string out;
  for (const std::string& s : items) {
    if (!out.empty()) out += separator;
    out += s;
  }
  return out;
}

// 403 for a valid key that lacks a scope the route needs (RFC 6750, section 3.1): the
// caller proved it holds the key, so it may learn which scopes are missing.
void forbidden(httplib::Response& res, const apikeys::Requirements& required,
               const std::vector<std::string>& missing) {
  res.status = 403;
  res.set_header("WWW-Authenticate",
                 "Bearer realm=\"apikeys example\", "
                 "error=\"insufficient_scope\", scope=\"" +
                     join(required.scopes, ' ') + "\"");
  res.set_header("Cache-Control", "no-store");
  res.set_content(
      "{\"error\":\"insufficient_scope\",\"message\":\"The API key lacks a scope this route "
      "needs.\",\"missing_scopes\":" +
          json_string_array(missing) + "}\n",
      "application/json");
}

// Whole seconds, rounded up: a client that waits that long is never early.
std::int64_t ceil_seconds(std::chrono::milliseconds ms) {
  const std::int64_t n = std::max<std::int64_t>(ms.count(), 0);
  return n / 1000 + (n % 1000 != 0 ? 1 : 0);  // no overflow at milliseconds::max()
}

// How long `limit` takes to give back `units` requests of room: units * period / limit,
// rounded up; milliseconds::max() past what the type holds.
std::chrono::milliseconds refill_time(const apikeys::RateLimit& limit, std::uint64_t units) {
  // A key's limit and burst are at most KeyPolicyLimits::kMaxRateLimitValue and its
  // period at most a day, so the product fits; the check keeps it so for any value.
  const auto period = static_cast<std::uint64_t>(limit.period.count());
  const auto most = static_cast<std::uint64_t>(std::chrono::milliseconds::max().count());
  if (limit.limit == 0) return std::chrono::milliseconds::max();
  if (period != 0 && units > (most - limit.limit) / period) return std::chrono::milliseconds::max();
  return std::chrono::milliseconds(
      static_cast<std::int64_t>((units * period + limit.limit - 1) / limit.limit));
}

// One item of RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers, a Structured Field
// list): "name";q=<quota>;w=<window in seconds>. The quota is the burst (what a client
// may send at once from rest, and so the most `r` ever says), and the window the time
// the limit takes to give all of it back: for the default burst, the limit and its
// period. Limit names are [a-z0-9_.-]: nothing to escape in a structured-field string.
std::string policy_item(const apikeys::RateLimit& limit) {
  const std::uint64_t quota = limit.effective_burst();
  return "\"" + limit.name + "\";q=" + std::to_string(quota) +
         ";w=" + std::to_string(ceil_seconds(refill_time(limit, quota)));
}

// One item of RateLimit: "name";r=<remaining>;t=<seconds until the quota is whole again>.
std::string limit_item(const std::string& name, std::uint64_t remaining,
                       std::chrono::milliseconds reset) {
  return "\"" + name + "\";r=" + std::to_string(remaining) +
         ";t=" + std::to_string(ceil_seconds(reset));
}

// On a valid answer: RateLimit-Policy and RateLimit for every limit of the key.
void admission_headers(httplib::Response& res, const apikeys::ValidationResult& result) {
  if (result.rate_limits.empty()) return;
  std::vector<std::string> policies;
  for (const apikeys::RateLimit& l : result.rate_limits) policies.push_back(policy_item(l));
  res.set_header("RateLimit-Policy", join(policies, ','));
  std::vector<std::string> states;
  for (std::size_t i = 0; i < result.limits.size() && i < result.rate_limits.size(); ++i) {
    states.push_back(
        limit_item(result.rate_limits[i].name, result.limits[i].remaining, result.limits[i].reset));
  }
  if (!states.empty()) res.set_header("RateLimit", join(states, ','));
}

// 429 when a rate limit refused: the client may retry after Retry-After seconds, the
// time until this request (of `cost`) would be admitted. RateLimit's t means what it
// means on a 200, the time until the limit's whole quota is back: Retry-After, plus
// what the limit takes to give back the rest of its burst.
void too_many_requests(httplib::Response& res, const apikeys::ValidationResult& result,
                       std::uint64_t cost) {
  const std::int64_t seconds = std::max<std::int64_t>(ceil_seconds(result.retry_after), 1);
  res.status = 429;
  res.set_header("Retry-After", std::to_string(seconds));
  // The fields of the limit that refused: the others were not consulted to the end.
  std::chrono::milliseconds whole = result.retry_after;
  for (const apikeys::RateLimit& l : result.rate_limits) {
    if (l.name != result.limited_by) continue;
    res.set_header("RateLimit-Policy", policy_item(l));
    const std::uint64_t burst = l.effective_burst();
    const std::chrono::milliseconds rest = refill_time(l, burst - std::min(cost, burst));
    const std::chrono::milliseconds most = std::chrono::milliseconds::max();
    whole = whole > most - rest ? most : whole + rest;
  }
  res.set_header("RateLimit", limit_item(result.limited_by, 0, whole));
  res.set_header("Cache-Control", "no-store");
  res.set_content(
      "{\"error\":\"rate_limited\",\"message\":\"Too many requests for this API "
      "key.\",\"limit\":\"" +
          result.limited_by + "\",\"retry_after\":" + std::to_string(seconds) + "}\n",
      "application/json");
}

// 402 when the key's credits are used up. Not 429: retrying later does not help before
// the next refill, so no Retry-After; the client must top up the balance.
void payment_required(httplib::Response& res, const apikeys::ValidationResult& result) {
  res.status = 402;
  res.set_header("Cache-Control", "no-store");
  const std::string remaining =
      result.credits_remaining ? std::to_string(*result.credits_remaining) : "null";
  res.set_content(
      "{\"error\":\"usage_exceeded\",\"message\":\"The API key's credits are used up; top up "
      "its balance.\",\"remaining\":" +
          remaining + "}\n",
      "application/json");
}

// The middleware: the route runs only for a valid key that grants every scope in
// `required`. A failed key gets the same 401 whatever the reason (unknown, wrong secret,
// expired, revoked, disabled): saying why would tell a caller which public keys exist.
// The server log may.
httplib::Server::Handler require_api_key(const apikeys::KeyManager& keys,
                                         apikeys::Requirements required, AuthedHandler next) {
  return [&keys, required = std::move(required),
          next = std::move(next)](const httplib::Request& req, httplib::Response& res) {
    std::string_view token;
    switch (presented_token(req, token)) {
      case Presented::none:
        unauthorized(res, "missing_api_key",
                     "Send X-API-Key: pk_...:sk_... or Authorization: Bearer pk_...:sk_...");
        return;
      case Presented::unusable:
        unauthorized(res, "invalid_api_key", "Send exactly one API key.");
        return;
      case Presented::token: break;
    }
    // noexcept; fails closed
    const apikeys::ValidationResult result = keys.validate(token, required);
    if (result.code == apikeys::ValidationCode::insufficient_scope) {
      std::cerr << req.method << ' ' << req.path << ": key lacks a scope\n";
      forbidden(res, required, result.missing_scopes);
      return;
    }
    if (result.code == apikeys::ValidationCode::rate_limited) {
      std::cerr << req.method << ' ' << req.path << ": key rate limited\n";
      too_many_requests(res, result, required.cost);
      return;
    }
    if (result.code == apikeys::ValidationCode::usage_exceeded) {
      std::cerr << req.method << ' ' << req.path << ": key out of credits\n";
      payment_required(res, result);
      return;
    }
    if (!result.ok()) {
      std::cerr << req.method << ' ' << req.path << ": key refused ("
                << apikeys::to_string(result.code) << ")\n";
      unauthorized(res, "invalid_api_key", "The API key is not valid.");
      return;
    }
    admission_headers(res, result);
    next(req, res, result.account_id);
  };
}

}  // namespace

int main(int argc, char** argv) {
  int port = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--port" && i + 1 < argc) {
      port = std::atoi(argv[++i]);
    } else {
      std::cerr << "usage: example_http_server [--port N]\n";
      return 2;
    }
  }

  // Stop on SIGINT/SIGTERM: block them in every thread (the server's threads inherit
  // this mask) and wait for them on one thread, which stops the server.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::string pepper;  // a real service loads the same pepper on every start
  apikeys::append_random_base62(pepper, 43);
  apikeys::KeyManagerOptions options;
  options.validation.cache = std::make_shared<apikeys::MemoryCache>();
  // Counts every validation (and the manager's changes) for GET /metrics.
  const auto stats = std::make_shared<apikeys::Stats>();
  options.validation.observers = {stats};
  apikeys::KeyManager keys(std::make_shared<apikeys::MemoryStore>(),
                           std::make_shared<apikeys::HmacSha256Hasher>(pepper), options);

  const apikeys::Uuid account = apikeys::Uuid::random();
  apikeys::CreateRequest request;
  request.title = "demo";
  const apikeys::CreatedKey valid = keys.create(account, request);
  request.title = "demo, invoice reader";
  request.scopes = {"invoices:read"};
  const apikeys::CreatedKey reader = keys.create(account, request);
  request.scopes.clear();
  request.title = "demo, revoked";
  const apikeys::CreatedKey revoked = keys.create(account, request);
  keys.revoke(account, revoked.info.key_id);
  request.title = "demo, disabled";
  const apikeys::CreatedKey disabled = keys.create(account, request);
  keys.disable(account, disabled.info.key_id);
  request.title = "demo, one request a minute, two at once";
  request.rate_limits = {apikeys::parse_rate_limit("per-minute=1/1m:2")};
  const apikeys::CreatedKey limited = keys.create(account, request);
  request.rate_limits.clear();
  request.title = "demo, one credit";
  apikeys::Credits one_credit;
  one_credit.remaining = 1;
  request.credits = one_credit;
  const apikeys::CreatedKey metered = keys.create(account, request);
  const auto print_key = [](const char* name, const apikeys::CreatedKey& key) {
    std::cout << name << ' ' << key.info.public_key << ':' << key.secret_key.reveal() << '\n';
  };
  std::cout << "account " << account.to_string() << '\n';
  print_key("valid-key", valid);
  print_key("reader-key", reader);
  print_key("revoked-key", revoked);
  print_key("disabled-key", disabled);
  print_key("limited-key", limited);
  print_key("credit-key", metered);

  httplib::Server server;
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}\n", "application/json");
  });
  server.Get("/metrics", [&stats](const httplib::Request&, httplib::Response& res) {
    res.set_content(stats->to_prometheus_text(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/whoami", require_api_key(keys, {},
                                        [](const httplib::Request&, httplib::Response& res,
                                           const apikeys::Uuid& account_id) {
                                          res.set_content("{\"account_id\":\"" +
                                                              account_id.to_string() + "\"}\n",
                                                          "application/json");
                                        }));
  apikeys::Requirements invoices_read;
  invoices_read.scopes = {"invoices:read"};
  server.Get("/invoices", require_api_key(keys, invoices_read,
                                          [](const httplib::Request&, httplib::Response& res,
                                             const apikeys::Uuid& account_id) {
                                            res.set_content("{\"account_id\":\"" +
                                                                account_id.to_string() +
                                                                "\",\"invoices\":[]}\n",
                                                            "application/json");
                                          }));

  const char* host = "127.0.0.1";
  if (port == 0) {
    port = server.bind_to_any_port(host);
  } else if (!server.bind_to_port(host, port)) {
    port = -1;
  }
  if (port <= 0) {
    std::cerr << "cannot listen on " << host << '\n';
    return 1;
  }
  std::cout << "listening http://" << host << ':' << port << std::endl;

  std::atomic<bool> signalled{false};
  std::thread waiter([&] {
    int received = 0;
    sigwait(&stop_signals, &received);
    signalled = true;
    server.stop();
  });
  const bool served = server.listen_after_bind();
  if (!signalled) pthread_kill(waiter.native_handle(), SIGTERM);  // wake the waiter
  waiter.join();
  std::cout << "stopped" << std::endl;
  return served || signalled ? 0 : 1;
}
