#include <cstdio>
int main() { std::puts("subq"); return 0; }
