// Prints a Kafka broker's request metrics read over JMX, one line per metric and request
// type: "<metric> <request>[@<version>] <count> [<mean ms>]". Run as a single-file program:
//     java bench/jmx/RequestMetrics.java <jmx port>
// bench/broker_requests.py reads it before and after the measured jobs.
import java.util.List;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class RequestMetrics {
    private static final List<String> METRICS =
        List.of("RequestsPerSec", "LocalTimeMs", "TotalTimeMs", "ResponseSendTimeMs");

    public static void main(String[] args) throws Exception {
        JMXServiceURL url = new JMXServiceURL(
            "service:jmx:rmi:///jndi/rmi://127.0.0.1:" + args[0] + "/jmxrmi");
        try (JMXConnector connector = JMXConnectorFactory.connect(url)) {
            MBeanServerConnection server = connector.getMBeanServerConnection();
            for (String metric : METRICS) {
                ObjectName pattern = new ObjectName(
                    "kafka.network:type=RequestMetrics,name=" + metric + ",*");
                for (ObjectName name : server.queryNames(pattern, null)) {
                    String request = name.getKeyProperty("request");
                    String version = name.getKeyProperty("version");
                    StringBuilder line = new StringBuilder(metric).append(' ').append(request);
                    if (version != null) {
                        line.append('@').append(version);
                    }
                    line.append(' ').append(server.getAttribute(name, "Count"));
                    if (!metric.equals("RequestsPerSec")) {
                        line.append(' ').append(server.getAttribute(name, "Mean"));
                    }
                    System.out.println(line);
                }
            }
        }
    }
}
