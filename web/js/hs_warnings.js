// Shows on the node the warnings it logged while it ran (the "hs_warnings" UI output, see nodes/ui_warnings.py),
// so a result changed by a fallback is explained where the user looks, not only in the server console.
import { app } from "../../scripts/app.js";

const KEY = "hs_warnings";
const WIDGET = "hs_warnings";

function removeWarnings(node) {
  const index = node.widgets?.findIndex((w) => w.name === WIDGET) ?? -1;
  if (index < 0) return;
  node.widgets[index].onRemove?.();
  node.widgets.splice(index, 1);
  node.setDirtyCanvas?.(true, true);
}

function showWarnings(node, messages) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    const element = document.createElement("div");
    element.className = "hs-warnings";
    Object.assign(element.style, {
      color: "#ffcc66",
      background: "rgba(80, 50, 0, 0.55)",
      border: "1px solid #aa7a00",
      borderRadius: "4px",
      padding: "4px 6px",
      font: "12px sans-serif",
      whiteSpace: "pre-wrap",
      overflowY: "auto",
      boxSizing: "border-box",
    });
    widget = node.addDOMWidget(WIDGET, "hs_warnings", element, { hideOnZoom: false, serialize: false });
    widget.serialize = false; // never part of the saved workflow's widgets_values
    widget.serializeValue = () => undefined;
    // tall enough for the wrapped text at the node's width (12 px font ≈ 6.5 px a character), scrolls beyond
    widget.computeLayoutSize = () => {
      const perLine = Math.max(20, Math.floor((node.size[0] - 32) / 6.5));
      const lines = widget.hsMessages.reduce((n, m) => n + Math.ceil((m.length + 2) / perLine), 0);
      return { minHeight: Math.min(180, 16 * lines + 14), minWidth: 200 };
    };
  }
  widget.hsMessages = messages;
  widget.element.textContent = messages.map((m) => `⚠ ${m}`).join("\n");
  widget.element.title = widget.element.textContent;
  const [width, height] = node.size;
  const needed = node.computeSize();
  node.setSize([Math.max(width, needed[0]), Math.max(height, needed[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "HSDiffusion.NodeWarnings",
  async beforeRegisterNodeDef(nodeType) {
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const messages = output?.[KEY];
      if (Array.isArray(messages) && messages.length) showWarnings(this, messages);
    };
    const onExecutionStart = nodeType.prototype.onExecutionStart;
    nodeType.prototype.onExecutionStart = function () {
      onExecutionStart?.apply(this, arguments);
      removeWarnings(this);
    };
  },
});
