# Quick start:  make run   (build Release, run `subq bench` on its default sweep)
#               make test  (build Release, run the whole test suite through ctest)
# Both first run scripts/setup, which installs missing Debian packages.
.PHONY: run test test-asan setup build clean

BUILD := build/release

setup:
	@scripts/setup

build: setup
	cmake --preset release >/dev/null
	cmake --build --preset release

run: build
	$(BUILD)/bin/subq bench --json $(BUILD)/bench.json --plot $(BUILD)/bench.svg

test: build
	ctest --preset release

test-asan: setup
	cmake --preset asan >/dev/null
	cmake --build --preset asan
	ctest --preset asan

clean:
	rm -rf build
