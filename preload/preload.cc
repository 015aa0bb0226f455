extern "C" int netaccel_preload_placeholder() { return 0; }
