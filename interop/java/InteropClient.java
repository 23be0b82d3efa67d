import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.Authenticator;
import java.net.HttpURLConnection;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.PasswordAuthentication;
import java.net.Proxy;
import java.net.Socket;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

import okhttp3.Challenge;
import okhttp3.Credentials;
import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;

/**
 * The JVM side of gproxy's interop suite: one mode per run, printing what it
 * received so that the Python side checks the bytes.
 *
 * <pre>
 * java InteropClient MODE --proxy HOST:PORT [--user U:P] (--url URL | --dest HOST:PORT)
 *                         [--data TEXT] [--cert PEM]
 * </pre>
 *
 * Modes:
 * <ul>
 * <li>socks-socket: java.net.Socket(Proxy SOCKS), echo round trip (prints ECHO ...)</li>
 * <li>socks-urlconnection: HttpURLConnection GET through Proxy SOCKS</li>
 * <li>http-urlconnection: HttpURLConnection through Proxy HTTP (an https URL tunnels with CONNECT)</li>
 * <li>okhttp-http: OkHttp through Proxy HTTP, proxyAuthenticator answering 407 (GET, or POST with --data;
 *     an https URL tunnels with CONNECT)</li>
 * <li>okhttp-socks: OkHttp through Proxy SOCKS</li>
 * </ul>
 *
 * JVM quirks, handled here rather than by bending the proxy:
 * <ul>
 * <li>Loopback bypass: the JDK's default ProxySelector skips the proxy for localhost/127.*\/[::1]
 *     (http.nonProxyHosts). Every mode hands an explicit Proxy object to the client
 *     (Socket(proxy), openConnection(proxy), OkHttpClient.Builder.proxy(proxy)), so no ProxySelector
 *     and no bypass list is consulted; the Python side also checks gproxy's access log for the session.</li>
 * <li>Basic for CONNECT: the JDK disables Basic proxy auth for HTTPS tunnels by default
 *     (jdk.http.auth.tunneling.disabledSchemes=Basic). http-urlconnection clears that property before
 *     the HTTP classes load, as a user of an authenticated HTTP proxy must.</li>
 * <li>SOCKS4 fallback: when the greeting reply does not start with version 5, the JDK silently retries
 *     with SOCKS4 on the same socket. The client cannot turn that off, so the Python side checks that
 *     gproxy logged proto=socks5 for every SOCKS mode.</li>
 * <li>Java SOCKS credentials come from java.net.Authenticator (protocol "SOCKS5"); without one the JDK
 *     sends the OS user name with an empty password.</li>
 * </ul>
 */
public final class InteropClient {
    private static final int TIMEOUT_MS = 20_000;

    private final Map<String, String> opts;
    private final String proxyHost;
    private final int proxyPort;
    private final String user;
    private final String password;
    private final AtomicInteger authCalls = new AtomicInteger();

    private InteropClient(Map<String, String> opts) {
        this.opts = opts;
        String[] hostPort = splitHostPort(require("proxy"));
        this.proxyHost = hostPort[0];
        this.proxyPort = Integer.parseInt(hostPort[1]);
        String credentials = opts.get("user");
        if (credentials != null) {
            int colon = credentials.indexOf(':');
            this.user = credentials.substring(0, colon);
            this.password = credentials.substring(colon + 1);
        } else {
            this.user = null;
            this.password = null;
        }
    }

    public static void main(String[] args) throws Exception {
        // Must happen before java.net.HttpURLConnection's implementation class is loaded.
        System.setProperty("jdk.http.auth.tunneling.disabledSchemes", "");
        if (args.length < 1) {
            usage("no mode");
        }
        Map<String, String> opts = new HashMap<>();
        for (int i = 1; i < args.length; i += 2) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                usage("bad argument " + args[i]);
            }
            opts.put(args[i].substring(2), args[i + 1]);
        }
        InteropClient client = new InteropClient(opts);
        client.installAuthenticator();
        switch (args[0]) {
            case "socks-socket" -> client.socksSocket();
            case "socks-urlconnection" -> client.urlConnection(Proxy.Type.SOCKS);
            case "http-urlconnection" -> client.urlConnection(Proxy.Type.HTTP);
            case "okhttp-http" -> client.okhttp(Proxy.Type.HTTP);
            case "okhttp-socks" -> client.okhttp(Proxy.Type.SOCKS);
            default -> usage("unknown mode " + args[0]);
        }
        System.out.println("AUTH-CALLS " + client.authCalls.get());
        System.out.flush();
    }

    private static void usage(String why) {
        System.err.println("InteropClient: " + why);
        System.err.println("usage: InteropClient MODE --proxy HOST:PORT [--user U:P] (--url URL | --dest HOST:PORT)"
                + " [--data TEXT] [--cert PEM]");
        System.exit(2);
    }

    private String require(String key) {
        String value = opts.get(key);
        if (value == null) {
            usage("--" + key + " is required");
        }
        return value;
    }

    /** "host:port" or "[v6]:port" to {host, port}. */
    private static String[] splitHostPort(String text) {
        int colon = text.lastIndexOf(':');
        String host = text.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) {
            host = host.substring(1, host.length() - 1);
        }
        return new String[] {host, text.substring(colon + 1)};
    }

    private Proxy proxy(Proxy.Type type) {
        return new Proxy(type, new InetSocketAddress(proxyHost, proxyPort));
    }

    /** Credentials for the proxy only: the JDK asks for SOCKS5 and HTTP proxy auth here. */
    private void installAuthenticator() {
        if (user == null) {
            return;
        }
        Authenticator.setDefault(new Authenticator() {
            @Override
            protected PasswordAuthentication getPasswordAuthentication() {
                if (getRequestingPort() != proxyPort) {
                    return null; // never hand the proxy's password to anyone else
                }
                authCalls.incrementAndGet();
                return new PasswordAuthentication(user, password.toCharArray());
            }
        });
    }

    /**
     * A literal IP stays an IP (SOCKS ATYP 1 or 4); a name stays unresolved so the proxy resolves it
     * (ATYP 3), as OkHttp does for SOCKS.
     */
    private static InetSocketAddress destination(String text) throws IOException {
        String[] hostPort = splitHostPort(text);
        int port = Integer.parseInt(hostPort[1]);
        String host = hostPort[0];
        boolean literal = host.contains(":") || host.matches("[0-9.]+");
        if (literal) {
            return new InetSocketAddress(InetAddress.getByName(host), port);
        }
        return InetSocketAddress.createUnresolved(host, port);
    }

    private void socksSocket() throws IOException {
        byte[] payload = require("data").getBytes(StandardCharsets.UTF_8);
        try (Socket socket = new Socket(proxy(Proxy.Type.SOCKS))) {
            socket.setSoTimeout(TIMEOUT_MS);
            socket.connect(destination(require("dest")), TIMEOUT_MS);
            OutputStream out = socket.getOutputStream();
            out.write(payload);
            out.flush();
            socket.shutdownOutput(); // the echo server half-closes after us
            byte[] received = readAll(socket.getInputStream());
            System.out.println("ECHO " + new String(received, StandardCharsets.UTF_8));
        }
    }

    private void urlConnection(Proxy.Type type) throws Exception {
        URL url = new URL(require("url"));
        HttpURLConnection conn = (HttpURLConnection) url.openConnection(proxy(type));
        conn.setConnectTimeout(TIMEOUT_MS);
        conn.setReadTimeout(TIMEOUT_MS);
        if (conn instanceof HttpsURLConnection https) {
            https.setSSLSocketFactory(sslContext().getSocketFactory());
        }
        String data = opts.get("data");
        if (data != null) {
            conn.setRequestMethod("POST");
            conn.setDoOutput(true);
            conn.setRequestProperty("Content-Type", "text/plain; charset=utf-8");
            try (OutputStream out = conn.getOutputStream()) {
                out.write(data.getBytes(StandardCharsets.UTF_8));
            }
        }
        int status = conn.getResponseCode();
        InputStream body = status < 400 ? conn.getInputStream() : conn.getErrorStream();
        System.out.println("STATUS " + status);
        System.out.println("BODY " + (body == null ? "" : new String(readAll(body), StandardCharsets.UTF_8)));
        conn.disconnect();
    }

    private void okhttp(Proxy.Type type) throws Exception {
        OkHttpClient.Builder builder = new OkHttpClient.Builder()
                .proxy(proxy(type))
                .connectTimeout(TIMEOUT_MS, TimeUnit.MILLISECONDS)
                .readTimeout(TIMEOUT_MS, TimeUnit.MILLISECONDS)
                .retryOnConnectionFailure(false);
        if (type == Proxy.Type.HTTP && user != null) {
            // Answer a 407 only if it carries a Basic challenge, as RFC 7235 clients must.
            builder.proxyAuthenticator((route, response) -> {
                if (response.request().header("Proxy-Authorization") != null) {
                    return null; // our credentials were refused: give up, do not loop
                }
                boolean basic = false;
                boolean preemptive = false;
                for (Challenge challenge : response.challenges()) {
                    basic |= "Basic".equalsIgnoreCase(challenge.scheme());
                    preemptive |= "OkHttp-Preemptive".equals(challenge.scheme());
                }
                if (preemptive) {
                    return null; // OkHttp asks before each CONNECT; we answer only gproxy's real 407
                }
                if (!basic) {
                    System.err.println("407 without a Basic Proxy-Authenticate challenge: "
                            + response.headers("Proxy-Authenticate"));
                    return null;
                }
                authCalls.incrementAndGet();
                return response.request().newBuilder()
                        .header("Proxy-Authorization", Credentials.basic(user, password))
                        .build();
            });
        }
        String url = require("url");
        if (url.startsWith("https:")) {
            SSLContext ssl = sslContext();
            builder.sslSocketFactory(ssl.getSocketFactory(), trustManager());
        }
        OkHttpClient client = builder.build();
        Request.Builder request = new Request.Builder().url(url);
        String data = opts.get("data");
        if (data != null) {
            request.post(RequestBody.create(MediaType.get("text/plain; charset=utf-8"), data));
        }
        try (Response response = client.newCall(request.build()).execute()) {
            System.out.println("STATUS " + response.code());
            System.out.println("BODY " + response.body().string());
        } finally {
            client.dispatcher().executorService().shutdown();
            client.connectionPool().evictAll();
        }
    }

    private X509TrustManager trustManager() throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (InputStream in = new FileInputStream(require("cert"))) {
            Certificate cert = CertificateFactory.getInstance("X.509").generateCertificate(in);
            store.setCertificateEntry("interop-origin", cert);
        }
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(store);
        return (X509TrustManager) factory.getTrustManagers()[0];
    }

    /** Trusts exactly the test's self-signed origin certificate. */
    private SSLContext sslContext() throws Exception {
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, new javax.net.ssl.TrustManager[] {trustManager()}, null);
        return context;
    }

    private static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream buffer = new ByteArrayOutputStream();
        byte[] chunk = new byte[8192];
        for (int n; (n = in.read(chunk)) != -1; ) {
            buffer.write(chunk, 0, n);
        }
        return buffer.toByteArray();
    }
}
