// apikeys: the command-line tool. All of it lives in cli.cpp (see cli.hpp for what it
// does and how it keeps secrets out of sight), so the fuzzer can run the same code.

#include "cli.hpp"

int main(int argc, char** argv) { return apikeys::cli::run(argc, argv); }
