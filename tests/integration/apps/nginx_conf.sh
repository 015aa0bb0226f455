#!/usr/bin/env bash
# Writes an nginx configuration with Debian's default settings (a daemon,
# master plus `worker_processes auto` workers as www-data, sendfile on,
# tcp_nopush on), only the port, paths and logs made private:
#
#   nginx_conf.sh DIR PORT WWW > nginx.conf     # pid, logs, temp files in DIR
set -euo pipefail
dir=$1 port=$2 www=$3
mkdir -p "$dir/temp"
cat <<CONF
user www-data;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events {
	worker_connections 768;
}
http {
	sendfile on;
	tcp_nopush on;
	types_hash_max_size 2048;
	include /etc/nginx/mime.types;
	default_type application/octet-stream;
	access_log off;
	client_body_temp_path $dir/temp/body;
	proxy_temp_path $dir/temp/proxy;
	fastcgi_temp_path $dir/temp/fastcgi;
	uwsgi_temp_path $dir/temp/uwsgi;
	scgi_temp_path $dir/temp/scgi;
	server {
		listen 127.0.0.1:$port;
		root $www;
	}
}
CONF
