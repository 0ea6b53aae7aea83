// A strict parser of the Prometheus text exposition format, version 0.0.4, for tests:
// it accepts what a Prometheus server scrapes without complaint and refuses, with the
// line and the reason, anything that breaks the format's grammar or rules:
//  - lines end with '\n', the last one included; `# HELP name text` (escapes \\ and \n
//    only), `# TYPE name counter|gauge|histogram|summary|untyped`, other `#` lines are
//    comments, blank lines are ignored;
//  - metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* not
//    starting with "__", label values in double quotes with the escapes \\, \" and \n
//    only, a label at most once per sample, an optional trailing comma;
//  - values as Go's ParseFloat reads them in decimal (NaN, +Inf, -Inf included), an
//    optional integer timestamp;
//  - at most one HELP and one TYPE per family, both before its first sample; a family's
//    samples contiguous; no series twice;
//  - counters' samples named as the family; histograms' named family_bucket (with `le`),
//    family_sum and family_count, and for each label set: `le` values strictly
//    ascending, "+Inf" present, bucket counts non-decreasing, _count equal to the +Inf
//    bucket.
// With require_help_and_type (the default) every family must have both HELP and TYPE.
// Thread-safety: plain functions on values. Throws std::runtime_error on a bad input.
#ifndef APIKEYS_TESTS_PROMETHEUS_TEXT_HPP
#define APIKEYS_TESTS_PROMETHEUS_TEXT_HPP

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace apikeys_test::prometheus {

using Labels = std::map<std::string, std::string>;

struct Sample {
  std::string name;  // the sample's own name (family_bucket, family_sum, ...)
  Labels labels;
  double value = 0;
};

struct Family {
  std::string name;
  std::string help;  // unescaped
  std::string type;  // "untyped" when no TYPE line
  bool has_help = false;
  bool has_type = false;
  std::vector<Sample> samples;
};

namespace detail {

[[noreturn]] inline void fail(std::size_t line, const std::string& why) {
  throw std::runtime_error("line " + std::to_string(line) + ": " + why);
}

inline bool name_start(char c, bool colon) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}
inline bool name_char(char c, bool colon) { return name_start(c, colon) || (c >= '0' && c <= '9'); }

// Reads a metric name (colon: true) or label name at `s`, advancing it.
inline std::string read_name(std::string_view& s, bool colon, std::size_t line, const char* what) {
  if (s.empty() || !name_start(s.front(), colon)) fail(line, std::string("bad ") + what);
  std::size_t n = 1;
  while (n < s.size() && name_char(s[n], colon)) ++n;
  std::string out(s.substr(0, n));
  s.remove_prefix(n);
  return out;
}

inline bool is_metric_name(std::string_view s) {
  if (s.empty() || !name_start(s.front(), true)) return false;
  for (char c : s) {
    if (!name_char(c, true)) return false;
  }
  return true;
}

inline std::size_t skip_blanks(std::string_view& s) {
  std::size_t n = 0;
  while (n < s.size() && (s[n] == ' ' || s[n] == '\t')) ++n;
  s.remove_prefix(n);
  return n;
}

// A value as Go's strconv.ParseFloat reads decimal text, plus its Inf/NaN spellings.
inline bool parse_float(std::string_view s, double& out) {
  if (s == "+Inf" || s == "Inf") {
    out = HUGE_VAL;
    return true;
  }
  if (s == "-Inf") {
    out = -HUGE_VAL;
    return true;
  }
  if (s == "NaN") {
    out = std::nan("");
    return true;
  }
  std::size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  std::size_t digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    std::size_t exp = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++exp;
    if (exp == 0) return false;
  }
  if (i != s.size()) return false;
  out = std::strtod(std::string(s).c_str(), nullptr);
  return true;
}

inline bool parse_timestamp(std::string_view s) {
  std::size_t i = (!s.empty() && s[0] == '-') ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return s.size() <= 20;
}

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The family a sample named `name` belongs to, given the families TYPEd so far: a
// histogram's (or summary's) _bucket/_sum/_count series belong to it.
inline std::string family_of(const std::string& name, const std::map<std::string, Family>& known) {
  for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
    if (!ends_with(name, suffix)) continue;
    const std::string base = name.substr(0, name.size() - suffix.size());
    const auto it = known.find(base);
    if (it != known.end() &&
        (it->second.type == "histogram" || (it->second.type == "summary" && suffix != "_bucket"))) {
      return base;
    }
  }
  return name;
}

inline std::string series_key(const std::string& name, const Labels& labels) {
  std::string k = name + "{";
  for (const auto& [n, v] : labels) k += n + "=\"" + v + "\",";
  return k + "}";
}

inline void check_histogram(const Family& f) {
  struct Series {
    std::vector<std::pair<double, double>> buckets;  // (le, count) in order of appearance
    bool has_sum = false;
    bool has_count = false;
    double count = 0;
  };
  std::map<Labels, Series> by_labels;
  for (const Sample& s : f.samples) {
    Labels rest = s.labels;
    if (s.name == f.name + "_bucket") {
      const auto le = rest.find("le");
      if (le == rest.end()) throw std::runtime_error(f.name + ": a bucket without le");
      double bound = 0;
      if (!parse_float(le->second, bound) || std::isnan(bound)) {
        throw std::runtime_error(f.name + ": bad le \"" + le->second + "\"");
      }
      rest.erase(le);
      by_labels[rest].buckets.emplace_back(bound, s.value);
    } else if (s.name == f.name + "_sum") {
      if (rest.count("le") != 0) throw std::runtime_error(f.name + "_sum with le");
      by_labels[rest].has_sum = true;
    } else if (s.name == f.name + "_count") {
      if (rest.count("le") != 0) throw std::runtime_error(f.name + "_count with le");
      by_labels[rest].has_count = true;
      by_labels[rest].count = s.value;
    } else {
      throw std::runtime_error(f.name + ": sample " + s.name + " in a histogram");
    }
  }
  for (const auto& [labels, h] : by_labels) {
    const std::string where = series_key(f.name, labels);
    if (h.buckets.empty()) throw std::runtime_error(where + ": no buckets");
    for (std::size_t i = 1; i < h.buckets.size(); ++i) {
      if (!(h.buckets[i].first > h.buckets[i - 1].first)) {
        throw std::runtime_error(where + ": le not ascending");
      }
      if (h.buckets[i].second < h.buckets[i - 1].second) {
        throw std::runtime_error(where + ": buckets not cumulative");
      }
    }
    if (!std::isinf(h.buckets.back().first)) throw std::runtime_error(where + ": no +Inf bucket");
    if (!h.has_sum || !h.has_count) throw std::runtime_error(where + ": no _sum or _count");
    if (h.count != h.buckets.back().second) {
      throw std::runtime_error(where + ": _count differs from the +Inf bucket");
    }
  }
}

}  // namespace detail

// Parses `text`; see the top of this header. Families in order of appearance.
inline std::vector<Family> parse(std::string_view text, bool require_help_and_type = true) {
  using detail::fail;
  std::map<std::string, Family> families;
  std::vector<std::string> order;
  std::set<std::string> closed;  // families whose samples ended (another family's began)
  std::set<std::string> series;
  std::string current;  // the family of the last sample
  if (!text.empty() && text.back() != '\n') fail(0, "the text does not end with a newline");

  const auto family = [&](const std::string& name) -> Family& {
    auto it = families.find(name);
    if (it == families.end()) {
      it = families.emplace(name, Family{}).first;
      it->second.name = name;
      it->second.type = "untyped";
      order.push_back(name);
    }
    return it->second;
  };

  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol + 1);
    std::string_view s = line;
    detail::skip_blanks(s);
    if (s.empty()) continue;

    if (s.front() == '#') {
      s.remove_prefix(1);
      detail::skip_blanks(s);
      const bool help = s.substr(0, 5) == "HELP " || s.substr(0, 5) == "HELP\t";
      const bool type = s.substr(0, 5) == "TYPE " || s.substr(0, 5) == "TYPE\t";
      if (!help && !type) continue;  // a comment
      s.remove_prefix(4);
      detail::skip_blanks(s);
      const std::string name = detail::read_name(s, true, line_no, "metric name");
      if (!s.empty() && detail::skip_blanks(s) == 0) fail(line_no, "no blank after the name");
      Family& f = family(name);
      if (!f.samples.empty()) fail(line_no, name + ": HELP or TYPE after its samples");
      if (help) {
        if (f.has_help) fail(line_no, name + ": a second HELP");
        f.has_help = true;
        for (std::size_t i = 0; i < s.size(); ++i) {
          if (s[i] != '\\') {
            f.help += s[i];
          } else if (i + 1 < s.size() && s[i + 1] == '\\') {
            f.help += '\\';
            ++i;
          } else if (i + 1 < s.size() && s[i + 1] == 'n') {
            f.help += '\n';
            ++i;
          } else {
            fail(line_no, name + ": bad escape in HELP");
          }
        }
      } else {
        if (f.has_type) fail(line_no, name + ": a second TYPE");
        while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
        if (s != "counter" && s != "gauge" && s != "histogram" && s != "summary" &&
            s != "untyped") {
          fail(line_no, name + ": unknown type '" + std::string(s) + "'");
        }
        f.has_type = true;
        f.type = std::string(s);
      }
      continue;
    }

    Sample sample;
    sample.name = detail::read_name(s, true, line_no, "metric name");
    if (!s.empty() && s.front() == '{') {
      s.remove_prefix(1);
      for (;;) {
        detail::skip_blanks(s);
        if (!s.empty() && s.front() == '}') break;
        const std::string label = detail::read_name(s, false, line_no, "label name");
        if (label.rfind("__", 0) == 0) fail(line_no, "reserved label name " + label);
        detail::skip_blanks(s);
        if (s.empty() || s.front() != '=') fail(line_no, "no '=' after label " + label);
        s.remove_prefix(1);
        detail::skip_blanks(s);
        if (s.empty() || s.front() != '"') fail(line_no, "label value not quoted");
        s.remove_prefix(1);
        std::string value;
        bool closed_quote = false;
        while (!s.empty()) {
          const char c = s.front();
          s.remove_prefix(1);
          if (c == '"') {
            closed_quote = true;
            break;
          }
          if (c != '\\') {
            value += c;
            continue;
          }
          if (s.empty()) break;
          const char e = s.front();
          s.remove_prefix(1);
          if (e == '\\' || e == '"') {
            value += e;
          } else if (e == 'n') {
            value += '\n';
          } else {
            fail(line_no, "bad escape in a label value");
          }
        }
        if (!closed_quote) fail(line_no, "unterminated label value");
        if (!sample.labels.emplace(label, std::move(value)).second) {
          fail(line_no, "label " + label + " twice");
        }
        detail::skip_blanks(s);
        if (!s.empty() && s.front() == ',') {
          s.remove_prefix(1);
          continue;
        }
        if (s.empty() || s.front() != '}') fail(line_no, "no ',' or '}' after a label");
        break;
      }
      s.remove_prefix(1);  // '}'
    }
    if (detail::skip_blanks(s) == 0) fail(line_no, "no blank before the value");
    const std::size_t end = s.find_first_of(" \t");
    const std::string_view value = s.substr(0, end);
    if (!detail::parse_float(value, sample.value)) {
      fail(line_no, "bad value '" + std::string(value) + "'");
    }
    s.remove_prefix(value.size());
    detail::skip_blanks(s);
    if (!s.empty()) {
      std::string_view ts = s;
      const std::size_t ts_end = ts.find_first_of(" \t");
      const std::string_view stamp = ts.substr(0, ts_end);
      ts.remove_prefix(stamp.size());
      detail::skip_blanks(ts);
      if (!detail::parse_timestamp(stamp) || !ts.empty()) fail(line_no, "bad timestamp");
    }

    const std::string fam = detail::family_of(sample.name, families);
    if (fam != current) {
      if (closed.count(fam) != 0) fail(line_no, fam + ": its samples are not together");
      if (!current.empty()) closed.insert(current);
      current = fam;
    }
    Family& f = family(fam);
    if (require_help_and_type && (!f.has_help || !f.has_type)) {
      fail(line_no, fam + ": a sample before (or without) its HELP and TYPE");
    }
    if ((f.type == "counter" || f.type == "gauge" || f.type == "untyped") && sample.name != fam) {
      fail(line_no, sample.name + ": not the name of its family " + fam);
    }
    if (f.type == "counter" && (sample.value < 0 || std::isnan(sample.value))) {
      fail(line_no, sample.name + ": a counter below zero");
    }
    if (!series.insert(detail::series_key(sample.name, sample.labels)).second) {
      fail(line_no, "series " + detail::series_key(sample.name, sample.labels) + " twice");
    }
    f.samples.push_back(std::move(sample));
  }

  std::vector<Family> out;
  for (const std::string& name : order) {
    Family& f = families[name];
    if (require_help_and_type && (!f.has_help || !f.has_type)) {
      throw std::runtime_error(name + ": no HELP or no TYPE");
    }
    if (f.type == "histogram") detail::check_histogram(f);
    out.push_back(std::move(f));
  }
  return out;
}

// The value of the series `name{labels}`; throws when it is missing.
inline double value(const std::vector<Family>& families, const std::string& name,
                    const Labels& labels = {}) {
  for (const Family& f : families) {
    for (const Sample& s : f.samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
  }
  throw std::runtime_error("no series " + detail::series_key(name, labels));
}

}  // namespace apikeys_test::prometheus

#endif  // APIKEYS_TESTS_PROMETHEUS_TEXT_HPP
